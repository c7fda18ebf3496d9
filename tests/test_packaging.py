"""What a non-editable install carries: the bundled search spaces, the papers' reference tables and the C++
source of the fused loss kernels (built on first use)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_spaces_and_reference_tables(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    for space in (ROOT / "search_spaces").glob("*.yaml"):
        assert f"tune_losses/search_spaces/{space.name}" in names
    for table in ("dal_table2.csv", "cc_loss_lambda.csv", "cc_loss_batch.csv", "beta_gamma_study.csv"):
        assert f"tune_losses/reference/{table}" in names
    assert "tune_losses/losses/csrc/fused.cpp" in names


@pytest.mark.skipif(not (ROOT.parent / "shared" / "reference").is_dir(), reason="no shared/reference beside")
def test_packaged_reference_tables_match_shared():
    for src in (ROOT.parent / "shared" / "reference").glob("*.csv"):
        assert (ROOT / "tune_losses" / "reference" / src.name).read_text() == src.read_text()
