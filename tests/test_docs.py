"""The documentation site: its strict build, its generated reference pages, the commands of its tutorials and
what a reader's browser shows.

- The site builds with `mkdocs build --strict` (a broken link, a missing page or snippet fails).
- The generators of the reference pages (docs/hooks/reference.py) list every command and option of the CLI,
  every field of the search-space schema, and every entry of the MLflow record (checked on a fake FIELDS list,
  since tune_losses/tracking/record.py may not exist yet).
- Every ```bash (and ```python) block of docs/tutorials/*.md runs, in order, as a reader would run it: in
  bash, in a fresh directory with a fresh HOME, through a `tune-losses` that adds small `--set` values to long
  commands (SHRINK) and stops `tune-losses ui` once it answers.
- Headless Chromium opens the built home page and the first tutorial: headings there, screenshots decoded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
CHROMIUM = "/usr/bin/chromium"
FASHION = [Path("/usr/share/datasets/fashion-mnist"), ROOT / "fashion-mnist"]

# Added to the tutorials' commands so that each runs in seconds; the commands themselves are run as written.
SHRINK = {
    "sweep": ["train.epochs=2", "train.repeats=1", "search.scheduler.max_t=2", "search.scheduler.grace_period=1"],
    "dal_a_table2": ["train.dataset.options.image_size=32"],  # VGG16 over 32-pixel images, not 256
    "cc_lambda": ["train.model.name=small_cnn"],  # the CAM model of cc_search instead of VGG16
    "beta_gamma_grid": ["train.model.name=small_cnn", "train.dataset.options.max_per_class=50"],
    "train": ["epochs=2"],
}


def load_hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------- the generated pages


def test_cli_page_lists_every_command_and_option():
    import argparse

    from tune_losses.cli import build_parser

    parser = build_parser()
    page = load_hook().cli_page(parser)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert len(commands) >= 9
    for name, sub in commands.items():
        assert f"## tune-losses {name}\n" in page
        section = page.split(f"## tune-losses {name}\n")[1].split("\n## ")[0]
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in section, (name, option)
            if not action.option_strings:
                assert f"`{action.metavar or action.dest}`" in section, (name, action.dest)


def test_schema_page_lists_every_field_with_its_default_and_allowed_values():
    from tune_losses import spaces

    page = load_hook().space_page()
    for model in (spaces.Space, spaces.Search, spaces.Scheduler, spaces.Domain, spaces.Resources):
        section = page.split(f"## {model.__name__}\n")[1].split("\n## ")[0]
        for name in model.model_fields:
            assert f"| `{name}` |" in section, (model.__name__, name)
    scheduler = page.split("## Scheduler\n")[1].split("\n## ")[0]
    assert '| `name` | one of `"asha"`, `"fifo"`, `"halving"` | `"asha"` |' in scheduler
    assert "| `reduction_factor` | float (> 1) | `2.0` |" in scheduler.replace("&gt;", ">")
    assert "`dal`" in page.split("## Registered names")[1]  # the loss registry's names
    assert "[Search](#search)" in page  # nested models link to their section


def test_record_page_from_a_fake_fields_list():
    hook = load_hook()
    field = lambda run, kind, name, meaning: types.SimpleNamespace(run=run, kind=kind, name=name, meaning=meaning)
    fields = [
        field("parent", "tag", "ended_by", "why the sweep ended: completed, time_budget, plateau or interrupted"),
        field("parent", "param", "swept.<path>", "the domain of the swept path <path>"),
        field("trial", "metric", "val_acc", "validation accuracy | mean over replicas"),
        field("trial", "tag", "tune_losses.trial_key", "the key a trial finds its run by"),
    ]
    page = hook.record_page(fields)
    parent = page.split("## The parent run")[1].split("\n## ")[0]
    trial = page.split("## A trial run")[1]
    assert "### Tags" in parent and "| `ended_by` | why the sweep ended" in parent
    assert "| `swept.<path>` | the domain of the swept path &lt;path&gt; |" in parent  # no HTML tag
    assert "### Metrics" in trial and "validation accuracy \\| mean over replicas" in trial
    assert "### Params" not in trial and "### Metrics" not in parent
    with pytest.raises(ValueError, match="kinds the page does not know"):
        hook.record_page([field("trial", "figure", "report/", "the report")])


def test_record_page_of_this_version():
    hook = load_hook()
    fields = hook.record_fields()
    page = hook.record_page(fields)
    if importlib.util.find_spec("tune_losses.tracking.record") is None:
        assert fields is None and "generated from `tune_losses/tracking/record.py`" in page
    else:
        assert fields and all(f"`{f.name}`" in page for f in fields)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.mark.slow
def test_strict_build_has_every_page_and_the_generated_references(site):
    for page in ("index.html", "tutorials/first-sweep/index.html", "reference/cli/index.html"):
        assert (site / page).is_file(), page
    assert "--warm-start" in (site / "reference/cli/index.html").read_text()
    assert "select_on_test_reason" in (site / "reference/search-space/index.html").read_text()
    assert "build_loss" in (site / "reference/python-api/index.html").read_text()  # mkdocstrings rendered it
    architecture = (site / "explanation/architecture/index.html").read_text()
    assert "The path of a sweep" in architecture  # ARCHITECTURE.md, included by the snippet
    assert "fonts.googleapis" not in (site / "index.html").read_text()  # offline: no web fonts
    assert not (site / "hooks").exists()


# ------------------------------------------------------------------------------------- the tutorials' commands


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """The ```bash and ```python blocks of a Markdown page, in order: (language, text)."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(bash|python)\n(.*?)^```", markdown, re.S | re.M)]


def test_code_blocks_are_extracted_whole_and_in_order():
    page = "text\n\n```bash\na --x \\\n    --y\nb\n```\n\n```yaml\nc: 1\n```\n```python\nimport os\n```\n"
    page += "```bash\nd <<'PY'\ne\nPY\n```\n"
    assert code_blocks(page) == [
        ("bash", "a --x \\\n    --y\nb\n"),
        ("python", "import os\n"),
        ("bash", "d <<'PY'\ne\nPY\n"),
    ]


SHIM = '''#!{python}
"""tune-losses as the tutorials' reader runs it, with SHRINK's --set values added, and `ui` stopped once it
answers (a reader stops it with Ctrl-C)."""
import json, os, signal, subprocess, sys, time, urllib.request

shrink = json.loads({shrink!r})
args = sys.argv[1:]
cli = [sys.executable, "-m", "tune_losses.cli"]
if args[:1] == ["sweep"]:
    for value in shrink["sweep"] + shrink.get(args[1], []):
        args += ["--set", value]
if args[:1] == ["train"]:
    for value in shrink["train"]:
        args += ["--set", value]
if args[:1] != ["ui"]:
    os.execv(sys.executable, cli + args)
proc = subprocess.Popen(cli + args + ["--port", "{port}"], stdout=subprocess.PIPE, text=True,
                        start_new_session=True)
print(proc.stdout.readline(), end="")
try:
    for _ in range(240):
        try:
            urllib.request.urlopen("http://127.0.0.1:{port}/health", timeout=1)
            sys.exit(0)
        except OSError:
            if proc.poll() is not None:
                sys.exit(proc.returncode or 1)
            time.sleep(0.5)
    sys.exit("the MLflow UI did not answer")
finally:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
'''


def reader(tmp_path: Path) -> tuple[Path, dict]:
    """A reader's fresh directory and HOME, with `.venv/bin/activate` putting the shimmed CLI on PATH."""
    work, home, bin_dir = tmp_path / "work", tmp_path / "home", tmp_path / "work" / ".venv" / "bin"
    for d in (work, home, bin_dir):
        d.mkdir(parents=True, exist_ok=True)
    (bin_dir / "tune-losses").write_text(
        SHIM.format(python=sys.executable, shrink=json.dumps(SHRINK), port=free_port())
    )
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    for f in ("tune-losses", "python"):
        (bin_dir / f).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TUNE_LOSSES_", "RAY_ADDRESS"))}
    env.update(
        HOME=str(home),
        PYTHONPATH=str(ROOT),
        TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions")),
        PATH=f"{bin_dir}:{env['PATH']}",
    )
    return work, env


def run_block(language: str, block: str, work: Path, env: dict) -> None:
    if language == "python":  # as the reader runs it, in the same directory, after the commands before it
        done = subprocess.run([sys.executable, "-"], input=block, cwd=work, env=env, capture_output=True, text=True)
    elif block.lstrip().startswith("make "):  # set-up: the target must exist; it is not run inside a test
        targets = block.split()[1:]
        done = subprocess.run(["make", "-n", *targets], cwd=ROOT, capture_output=True, text=True)
    else:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True, text=True, timeout=900
        )
    assert done.returncode == 0, f"{block}\n--- exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a tutorial's sweeps, one after another (4-10 min on 2 busy CPUs)
@pytest.mark.parametrize("tutorial", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_every_command_of_the_tutorial_runs(tutorial, tmp_path):
    blocks = code_blocks(tutorial.read_text())
    assert any(language == "bash" for language, _ in blocks), f"{tutorial.name} has no command"
    if "fashion_mnist" in "".join(text for _, text in blocks) and not any(p.is_dir() for p in FASHION):
        if os.environ.get("CI"):
            pytest.fail("Fashion-MNIST is missing (make setup installs dataset-fashion-mnist)")
        pytest.skip("needs Fashion-MNIST (Debian's dataset-fashion-mnist)")
    work, env = reader(tmp_path)
    try:
        for language, block in blocks:
            run_block(language, textwrap.dedent(block), work, env)
    finally:
        if (work / "runs" / "warm-ray.json").exists():  # a tutorial that failed between its `up` and its `down`
            down = [sys.executable, "-m", "tune_losses.cli", "down"]
            subprocess.run(down, cwd=work, env=env, capture_output=True, timeout=120)


# ------------------------------------------------------------------------------------- in a browser


@pytest.mark.slow
@pytest.mark.browser
def test_home_page_and_first_tutorial_in_chromium(site):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium or Playwright is missing (make setup installs both)")
        pytest.skip("needs Debian's chromium and the playwright package")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(site)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.set_default_timeout(30_000)
            for path, heading, images in (("", "tune_losses", 2), ("tutorials/first-sweep/", "Your first sweep", 3)):
                for _ in range(50):  # the server is up once a page loads
                    try:
                        page.goto(f"http://127.0.0.1:{port}/{path}")
                        break
                    except Exception:
                        page.wait_for_timeout(200)
                title = page.locator("article h1").first
                title.wait_for()
                assert title.inner_text().rstrip("¶ \n") == heading  # the permalink sign follows the title
                shots = page.locator("article img")
                assert shots.count() == images, path
                for i in range(images):
                    shots.nth(i).scroll_into_view_if_needed()
                    assert shots.nth(i).evaluate("img => img.complete && img.naturalWidth > 0"), (path, i)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
