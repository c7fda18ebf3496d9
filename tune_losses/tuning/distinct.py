"""Optuna's suggestions as trials of the ledger: the same config suggested twice is two trials, never one run.

A trial's key (tracking/ledger.py) is a hash of its swept values, so two trials of one config would share a run
and a checkpoint. Over a space with few distinct points (a ``choice``, a ``quniform``) TPE does suggest a config
again. :class:`DistinctTrials` wraps the searcher: a config already in the ledger (or running) gets the next
``sample`` index, a trial of its own with its own seeds, as a repeated grid point does (tuning/trial.py); in a
resumed sweep a suggested config whose earlier trial was interrupted continues that trial instead.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence

from ray.tune.search import Searcher

from tune_losses.tracking.ledger import TrialRecord
from tune_losses.tracking.record import swept_param


def _ident(values: dict) -> str:
    return json.dumps(values, sort_keys=True, default=str)


class DistinctTrials(Searcher):
    def __init__(self, searcher: Searcher, swept: list[str], records: Sequence[TrialRecord] = ()):
        self.searcher = searcher
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.taken: dict[str, set[int]] = {}  # config -> sample indices in the ledger or suggested (none: 0)
        self.resumable: dict[str, list[int]] = {}  # config -> samples of its interrupted trials, not yet resumed
        for r in records:
            ident = _ident({p: json.loads(r.params[swept_param(p)]) for p in swept if swept_param(p) in r.params})
            sample = int(r.params.get("sample", 0))
            self.taken.setdefault(ident, set()).add(sample)
            if not r.finished:
                self.resumable.setdefault(ident, []).append(sample)
        for samples in self.resumable.values():
            samples.sort()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        ok = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return ok

    def suggest(self, trial_id: str):
        config = self.searcher.suggest(trial_id)
        if not isinstance(config, dict):
            return config  # None (wait) or Searcher.FINISHED
        ident = _ident(config.get("params", {}))
        free = self.resumable.get(ident)
        if free:
            sample = free.pop(0)  # an interrupted trial of this config: continue it
        elif ident in self.taken:
            sample = max(self.taken[ident]) + 1  # a repeat: a trial of its own
        else:
            sample = 0
        self.taken.setdefault(ident, set()).add(sample)
        return config if sample == 0 else {**config, "sample": sample}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict:
        """What Ray Tune saves with its experiment state (a resume rebuilds all this from the ledger instead)."""
        return {"taken": copy.deepcopy(self.taken), "resumable": copy.deepcopy(self.resumable)}

    def set_state(self, state: dict) -> None:
        self.taken, self.resumable = state["taken"], state["resumable"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)
