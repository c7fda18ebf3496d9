"""The docs' pictures, made from a real sweep: `make screenshots` (not part of `make docs`, which stays offline
and fast). Commit what it writes.

It runs the quickstart sweep, shortened, into a temporary TUNE_LOSSES_HOME, starts `tune-losses ui` on that
store and captures with headless Chromium (Debian's, driven by Playwright):

- docs/img/mlflow-runs.png: the MLflow runs table, the sweep's parent run expanded to its trials;
- docs/img/mlflow-trial.png: one trial's val_acc chart over the epochs;
- docs/img/report.png: the top of the sweep's report.html.

It also writes docs/snippets/quickstart-output.txt, the sweep's console output, shown in the first tutorial.
The PNGs are reduced to 256 colours, so each stays well under 300 KB.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
IMG, SNIPPETS = DOCS / "img", DOCS / "snippets"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
# Shortened so the script takes about a minute on a laptop; the tutorial's caption names this command.
SWEEP = ["sweep", "quickstart", "--set", "train.epochs=4", "--set", "search.scheduler.max_t=4"]
ML = "workflowType=machine_learning"  # MLflow 3's UI shows runs tables (not GenAI traces) with it


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tune_losses.cli", *args]


def run_sweep(env: dict) -> str:
    """Run the shortened quickstart; return its console output, with the temporary paths made generic."""
    done = subprocess.run(cli(*SWEEP), env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        sys.exit(f"the sweep failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    text = (done.stderr + done.stdout).replace(env["TUNE_LOSSES_HOME"], "runs")
    return re.sub(r"/tmp/\S+", "...", text)


def start_ui(env: dict, port: int) -> tuple[subprocess.Popen, str]:
    """`tune-losses ui quickstart` on ``port``; returns the process and the parent run's page it printed."""
    proc = subprocess.Popen(
        cli("ui", "quickstart", "--port", str(port)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    first = proc.stdout.readline() if proc.stdout else ""
    page = first.rsplit(" ", 1)[-1].strip()
    for _ in range(180):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc, page
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"tune-losses ui exited with {proc.returncode}")
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    sys.exit("the MLflow UI did not answer within 90 s")


def capture(page_url: str, trial_run_id: str, report_html: Path) -> None:
    from playwright.sync_api import sync_playwright

    base = page_url.split("/#/")[0]
    experiment = re.search(r"experiments/(\d+)", page_url)
    assert experiment, f"no experiment in {page_url!r}"
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS, viewport={"width": 1280, "height": 720}
        )
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{base}/#/experiments/{experiment.group(1)}/runs?{ML}")
        page.get_by_text("quickstart", exact=True).wait_for()
        page.get_by_role("row").filter(has_text="quickstart").get_by_role("button").first.click()
        page.get_by_text("dal a=10", exact=True).wait_for()
        page.screenshot(path=IMG / "mlflow-runs.png")

        page.goto(f"{base}/#/experiments/{experiment.group(1)}/runs/{trial_run_id}/model-metrics?{ML}")
        page.get_by_placeholder("Search metric charts").fill("val_acc")
        page.locator(".js-plotly-plot svg").first.wait_for()
        page.screenshot(path=IMG / "mlflow-trial.png")

        page.goto(report_html.as_uri())
        page.get_by_role("heading", name="Report of sweep quickstart").wait_for()
        page.screenshot(path=IMG / "report.png")
        context.close()


def trial_run_id(home: str) -> str:
    """The MLflow run id of the trial shown in the metrics picture (`dal a=10`)."""
    from tune_losses import tracking

    client = tracking.client(f"sqlite:///{home}/mlflow.db")
    parent = tracking.find_sweep(client, "quickstart")
    runs = tracking.trial_runs(client, parent.info.run_id, parent.info.experiment_id)
    return next(r.info.run_id for r in runs if r.info.run_name == "dal a=10")


def shrink(path: Path) -> None:
    """256 colours: a UI screenshot loses nothing visible, and the file stays small in git."""
    from PIL import Image

    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)


def main() -> None:
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: apt-get install -y chromium")
    IMG.mkdir(exist_ok=True)
    SNIPPETS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "TUNE_LOSSES_HOME": home, "PYTHONPATH": str(ROOT)}
        env.pop("MLFLOW_TRACKING_URI", None)
        output = run_sweep(env)
        (SNIPPETS / "quickstart-output.txt").write_text(output)
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc, page = start_ui(env, port)
        try:
            capture(page, trial_run_id(home), Path(home) / "reports" / "quickstart" / "report.html")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    for name in ("mlflow-runs.png", "mlflow-trial.png", "report.png"):
        shrink(IMG / name)
        print(f"{IMG / name}: {(IMG / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
