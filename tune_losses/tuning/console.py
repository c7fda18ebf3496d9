"""What a sweep prints before Ray is up, and what it hides: run before Ray is imported (importing Ray Tune takes
seconds), so that a bad option still fails at once and the first line shows at once.

:func:`quiet` hides, at the default verbosity, what does not concern a user (Ray's tables and its TensorBoard
hint, Ray's token-authentication notice, MLflow's database set-up messages and its "View run" links); ``-v``
shows them again. :class:`FaultLog` sends what faults make Ray, Ray Tune, MLflow and urllib3 say (a raylet's
death with its log tail, a node marked dead, a lost trial's traceback, HTTP errors and retries while the store
is down) to the sweep's log file; at the default verbosity only there, with ``-v`` to the console as well. The
live view (tuning/progress.py) says each fault in one line instead and names the file.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

#: loggers that print on their own (a handler of their own, not propagating): Ray's, and MLflow's
OWN_HANDLERS = ("ray", "mlflow")


def quiet(verbose: int) -> None:
    """At ``verbose`` 0, silence what a sweep prints besides its own progress; a value the user set wins."""
    if verbose >= 1:
        return
    # Ray Tune's new output engine prints its configuration table, "View detailed results here" and a TensorBoard
    # hint even at verbose=0; the legacy engine (RAY_AIR_NEW_OUTPUT=0, Ray's documented switch) prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # "Token authentication is enabled for this Ray cluster ...": Ray's notice when it starts a local cluster with
    # a token it generated itself (a cluster joined with --address needs the user's token anyway).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # "🏃 View run ... at: http://..." and "🧪 View experiment at: ..." after every run ended against an MLflow server
    # (MLflow's documented switch); the sweep's own lines say where its runs are. Trials of a local Ray inherit it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # "Creating initial MLflow database tables..." / "Updating database tables" when a SQLite store is made
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    # "Failed to fetch metrics for N trial(s)": trials stopped (Ctrl-C, a budget) before their first report have
    # no result files; what they did is in MLflow, and the sweep's summary says so
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def header(space, name: str, resume: bool = False, warm: bool = False) -> str:
    """The line a sweep starts with, before Ray is up (which takes seconds; joining the warm Ray of `up`, less)."""
    from .search import max_trials

    s = space.search
    n = max_trials(space)  # the baseline trial included
    budget = f", time budget {s.time_budget_s:g} s" if s.time_budget_s else ""
    budget += f", plateau stop after {s.plateau.patience} trials" if s.plateau else ""
    starting = "Joining the warm Ray" if warm else "Starting Ray"
    cap = s.scheduler.max_t if s.scheduler.name != "fifo" else None
    capped = (
        f"\nNote: search.scheduler.max_t is {cap}, below train.epochs {space.train.epochs}: no trial trains past "
        f"epoch {cap}"
        + ("" if resume else f" (set --set search.scheduler.max_t={space.train.epochs} to train them all the way)")
        if cap and cap < space.train.epochs
        else ""
    )
    return (
        f"Sweep {name!r}: {'up to ' if s.searcher == 'optuna' or budget else ''}{n} trials of {space.train.epochs} "
        f"epochs ({space.train.loss.name} on {space.train.dataset.name}, {space.train.model.name}; "
        f"{s.searcher}, {s.scheduler.name}; {s.max_concurrent} at a time{budget}). {starting}...{capped}"
    )


class FaultLog:
    """The sweep's log file ``path`` for the messages of Ray, Ray Tune, MLflow, urllib3 and the package's own
    warnings (WARNING and above), and the messages the cluster pushes to the driver; created at the first one.
    At ``verbose`` 0 they go there only, otherwise to the console too. A context manager: on exit the loggers
    are as they were (``run_sweep`` may run again in the same process)."""

    #: the log file of the sweep this process drives now (the live view names it), or None
    active: FaultLog | None = None

    def __init__(self, path: Path, verbose: int):
        self.path, self.verbose = Path(path), verbose
        self.handler = _LazyFileHandler(self.path, delay=True, encoding="utf-8")
        self.handler.setLevel(logging.WARNING)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._undo: list = []

    @property
    def written(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def write(self, text: str) -> None:
        """A message the cluster pushed to the driver (its own lines, as Ray would print them)."""
        self.handler.handle(logging.LogRecord("ray.cluster", logging.ERROR, "", 0, text.rstrip(), None, None))

    def __enter__(self) -> FaultLog:
        root = logging.getLogger()
        self._add(root, self.handler)
        console = logging.StreamHandler(sys.stderr)  # the last resort Python gave before root had a handler
        if self.verbose >= 1:
            console.setLevel(logging.INFO if self.verbose > 1 else logging.WARNING)
        else:  # quiet, except the package's own errors (a trial's end not recorded): a user must see those
            console.setLevel(logging.ERROR)
            console.addFilter(lambda record: record.name.split(".")[0] == "tune_losses")
        self._add(root, console)
        for name in OWN_HANDLERS:  # through root's handlers instead (ray.init clears the "ray" logger's own)
            logger = logging.getLogger(name)
            for handler in [h for h in logger.handlers if isinstance(h, logging.StreamHandler)]:
                logger.removeHandler(handler)
                self._undo.append(lambda lg=logger, h=handler: lg.addHandler(h))
            if not logger.propagate:
                logger.propagate = True
                self._undo.append(lambda lg=logger: setattr(lg, "propagate", False))
        if "ray" in sys.modules:  # Ray is imported with tune_losses.tracking
            from tune_losses import _internals

            self._undo.append(_internals.route_cluster_messages(self.write, also_print=self.verbose >= 1))
        FaultLog.active = self
        return self

    def _add(self, logger: logging.Logger, handler: logging.Handler) -> None:
        logger.addHandler(handler)
        self._undo.append(lambda: logger.removeHandler(handler))

    def __exit__(self, *exc) -> None:
        FaultLog.active = None
        while self._undo:
            self._undo.pop()()
        self.handler.close()


class _LazyFileHandler(logging.FileHandler):
    """A file handler that makes its directory when it opens its file (at its first message): a sweep stopped by
    bad input, or one without faults, leaves nothing behind."""

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def fault_log_path(runs: Path, name: str) -> Path:
    """``<runs>/logs/<sweep>-<date>-<time>.log``: one per run of the driver (a resume writes its own)."""
    return Path(runs) / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
