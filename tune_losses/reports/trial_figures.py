"""Each trial run's own figures, drawn after the sweep from what MLflow holds: the test confusion matrix (from
its confusion_matrix.json) and the learning curves (from its metric histories), logged as PNG artifacts of
that trial run. Runs that already have them are left alone, so a resumed sweep or a second report adds only
what is missing."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from . import plots
from .collect import histories

FIGURES = ("confusion_matrix.png", "learning_curves.png")


def draw_trial_figures(client, runs) -> int:
    """Draw and log the missing figures of ``runs``; returns how many runs got figures."""
    drawn = 0
    for run in runs:
        rid = run.info.run_id
        present = {a.path for a in client.list_artifacts(rid)}
        if all(f in present for f in FIGURES):
            continue
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            if "confusion_matrix.png" not in present and "confusion_matrix.json" in present:
                confusion = json.loads(
                    Path(client.download_artifacts(rid, "confusion_matrix.json", str(tmp))).read_text()
                )
                plots.confusion_png(confusion, tmp / "confusion_matrix.png")
            curves = histories(client, [rid])[rid]
            if "learning_curves.png" not in present and len(curves):
                rows = [{"epoch": int(step), **row} for step, row in curves.to_dict("index").items()]
                plots.curves_png(rows, tmp / "learning_curves.png")
            for name in FIGURES:
                if (tmp / name).exists():
                    client.log_artifact(rid, str(tmp / name))
        drawn += 1
    return drawn
