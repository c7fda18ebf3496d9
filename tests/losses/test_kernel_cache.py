"""The fused loss kernels' build cache (tune_losses/losses/fused.py) is keyed by what makes the binary: two source
trees (two checkouts, two versions) never share a build directory, so neither rebuilds the other's; the same
source finds its build again. A build says so in one line; the Docker image builds the kernels at image build."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tune_losses.losses import fused

CSRC = Path(fused.__file__).with_name("csrc")
DOCKERFILE = Path(__file__).resolve().parents[2] / "docker" / "Dockerfile"


def _copy(tmp_path, name: str, edit: str = "") -> Path:
    tree = shutil.copytree(CSRC, tmp_path / name / "csrc")
    source = tree / "fused.cpp"
    source.write_text(source.read_text() + edit)
    return source


def test_two_source_trees_get_two_build_dirs_and_the_same_source_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    a, same, changed = _copy(tmp_path, "a"), _copy(tmp_path, "b"), _copy(tmp_path, "c", "\n// another version\n")
    assert fused.build_dir(a) == fused.build_dir(same) == fused.build_dir(fused.SOURCE)
    assert fused.build_dir(changed) != fused.build_dir(a)
    assert fused.build_dir(a).parent == tmp_path / "ext"  # PyTorch's own setting picks the root


def test_another_torch_version_gets_another_build_dir(monkeypatch):
    here = fused.build_dir()
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    assert fused.build_dir() != here


@pytest.mark.slow  # compiles the kernels (about a minute of CPU)
def test_the_dockerfiles_build_line_builds_once_and_says_so(tmp_path):
    """The Dockerfile's own RUN line, here, into an empty cache: one line while it builds, none once built."""
    line = next(ln for ln in DOCKERFILE.read_text().splitlines() if "fused.build()" in ln)
    command = line.removeprefix("RUN ").rstrip(" \\").replace("python ", f"{sys.executable} ", 1)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "PYTHONPATH": os.getcwd()}
    first = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    said = [ln for ln in first.stderr.splitlines() if ln.startswith("building the fused loss kernels, once")]
    assert len(said) == 1, first.stderr
    built = list((tmp_path / "ext").glob("tune_losses_fused_*/tune_losses_fused_*.so"))
    assert len(built) == 1 and str(built[0]) in first.stdout
    again = subprocess.run(command, shell=True, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "building" not in again.stderr, again.stderr
    # another checkout of the same source finds that build up to date (ninja rebuilt when the source path changed)
    log = built[0].with_name(".ninja_log")
    before = log.read_text()
    shutil.copytree(Path(fused.__file__).parents[1], tmp_path / "other" / "tune_losses")
    elsewhere = dict(env={**env, "PYTHONPATH": str(tmp_path / "other")}, cwd=tmp_path, text=True)
    other = subprocess.run(command, shell=True, capture_output=True, **elsewhere)
    which = [sys.executable, "-c", "import tune_losses; print(tune_losses.__file__)"]
    assert str(tmp_path / "other") in subprocess.check_output(which, **elsewhere)
    assert other.returncode == 0, other.stderr
    assert "building" not in other.stderr and log.read_text() == before, other.stderr


def test_the_build_notice_is_given_only_while_a_build_is_due(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    assert fused.build_notice().startswith("building the fused loss kernels, once, ~1 min")
    fake_build = fused.build_dir() / f"{fused.build_name()}.so"
    fake_build.parent.mkdir(parents=True)
    fake_build.touch()  # what a finished build leaves
    assert fused.build_notice() is None
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "other"))
    monkeypatch.setenv("TUNE_LOSSES_FUSED", "0")
    assert fused.build_notice() is None  # disabled: nothing is built
