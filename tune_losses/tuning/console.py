"""What a sweep prints before Ray is up, and what it hides: run before Ray is imported (importing Ray Tune takes
seconds), so that a bad option still fails at once and the first line shows at once.

:func:`quiet` hides, at the default verbosity, what does not concern a user (Ray's tables and its TensorBoard
hint, Ray's token-authentication notice, MLflow's database set-up messages and its "View run" links); ``-v``
shows them again. The live view itself is tuning/progress.py.
"""

from __future__ import annotations

import logging
import os


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


def header(space, name: str, resume: bool = False) -> str:
    """The line a sweep starts with, before Ray is up (which takes seconds)."""
    from .search import max_trials

    s = space.search
    n = max_trials(space)  # the baseline trial included
    budget = f", time budget {s.time_budget_s:g} s" if s.time_budget_s else ""
    budget += f", plateau stop after {s.plateau.patience} trials" if s.plateau else ""
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
        f"{s.searcher}, {s.scheduler.name}; {s.max_concurrent} at a time{budget}). Starting Ray...{capped}"
    )
