"""The project's run directory: ``TUNE_LOSSES_HOME``, ``runs/`` of the working directory by default. It holds the
default SQLite store, Ray's storage, the reports and the warm Ray's file. Standard library only: the CLI finds the
warm driver here before it imports anything heavy (tuning/warm_driver.py)."""

from __future__ import annotations

import os
from pathlib import Path


def run_dir() -> Path:
    return Path(os.environ.get("TUNE_LOSSES_HOME", "runs")).resolve()
