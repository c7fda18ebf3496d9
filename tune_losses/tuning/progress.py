"""The live view of a sweep: one progress display instead of Ray Tune's tables, and one line per trial event.

:class:`SweepProgress` is a Ray Tune callback. In a terminal it draws two lines with tqdm at the bottom of the
screen, redrawn in place::

    epochs 21/35 |█████████▋       | 60% 0:31 elapsed, ETA 0:20
    trials: 2 running, 1 finished, 1 stopped by ASHA, 0 diverged, 0 failed (of 5) | best val_acc 0.9542: dal a=20

and prints above them one line per trial event, under the name MLflow gives the trial's run::

    dal a=3: stopped by ASHA at epoch 3, val_acc 0.1
    dal a=20: finished 8 epochs, val_acc 0.9542 (best so far)

The epoch total is the budget still possible: every trial's epochs, less those that trials stopped early will not
run, so the bar ends full. The ETA is the epochs left at the rate since the first epoch was reported, capped by
what is left of ``search.time_budget_s``. Where the output is not a terminal (a pipe, a log file) nothing is
redrawn: the same status is printed as a line every ``interval`` seconds instead.

A fault is one line too, where Ray and MLflow would print tracebacks and dumps (console.py sends those to the
sweep's log file, which the first fault line and the sweep's last line name)::

    node 4c0938bd lost: trial dal a=10 goes on from epoch 7
    waiting for the tracking store since 14:24:10 (trials paused)
    tracking store back after 0:32

A trial's node is lost when its trial process became unreachable and the node's raylet no longer answers (or Ray
has marked the node dead); the epoch is that of the checkpoint the retry restores. The store's state is the
driver's (tracking/driver.py ``StoreWatch`` probes it every 2 s; trials wait for it as long as the driver).

What is hidden at the default verbosity, and the line a sweep starts with, are in console.py (no Ray import there:
they run before Ray is imported).
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from pathlib import Path

from ray.tune import Callback

from .console import FaultLog


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else str(value)


#: one store line at a time (the loop and the store watch both say them); module-level: Ray Tune pickles the
#: callback, and a lock does not pickle
_STORE_LINES = threading.Lock()


class SweepProgress(Callback):
    """Progress of a sweep (``space``: a ``spaces.Space``) as Ray Tune runs it.

    ``bar``: redraw a two-line display in place (default: when stderr is a terminal); otherwise print a status
    line every ``interval`` seconds. ``budget``: the sweep's :class:`~tune_losses.tuning.budgets.Budget`, to tell
    trials stopped by it from those stopped by ASHA and to cap the ETA. ``out``: where event lines go (stdout).
    ``configs``: how many trials the sweep has, as its header counts them, where fused groups (one Ray trial each,
    tuning/fusion.py) make Ray's count smaller: every count and the epochs are of configs, as the header's.
    """

    def __init__(
        self,
        space,
        budget=None,
        bar: bool | None = None,
        interval: float = 30.0,
        out=None,
        checkpoints: str = "",
        configs: int | None = None,
    ):
        from tune_losses.tracking.callback import trial_name

        self._trial_name = trial_name
        self.loss, self.paths = space.train.loss.name, list(space.params)
        self.epochs, self.metric, self.mode = space.train.epochs, space.search.metric, space.search.mode
        self.selects = space.selection_metric is not None  # protocol paper: a table of test numbers, no best
        self.budget, self.interval = budget, interval
        self.out = out
        self.use_bar = sys.stderr.isatty() if bar is None else bar
        self.total_trials: int | None = None
        self.configs = configs
        self.sizes: dict[str, int] = {}  # trial id -> the configs it trains (a fused group's members; else 1)
        self.epochs_done: dict[str, int] = {}  # trial id -> epochs reported
        self.value: dict[str, float] = {}  # trial id -> last metric value
        self.names: dict[str, str] = {}
        self.running: set[str] = set()
        self.pending = 0  # trials waiting for resources, or for their process to start
        # who stops trials early: ASHA, or synchronous halving (fifo stops none)
        self.scheduler = space.search.scheduler.name
        # who stops trials early: ASHA or halving; under fifo only a budget does (or Ray's stopper)
        self.stopper = {"halving": "halving", "asha": "ASHA"}.get(self.scheduler, "the stopper")
        self.stopped_key = f"stopped by {self.stopper}"
        self.counts = {"finished": 0, self.stopped_key: 0, "stopped by the budget": 0, "diverged": 0, "failed": 0}
        self.shown_stop = self.stopped_key if self.scheduler in ("asha", "halving") else ""  # shown even at 0
        self.started: set[str] = set()  # trials started once (halving pauses a trial and starts it again)
        self.unused_epochs = 0  # epochs that trials stopped early will not run
        self.best: tuple[float, str] | None = None
        self.start: float | None = None
        self.first_epoch_at: float | None = None
        self.first_epoch_done = 0
        self.last_draw = self.last_line = 0.0
        self.bars: tuple | None = None
        self.checkpoints = checkpoints  # the sweep's checkpoint root: the epoch a lost trial goes on from
        self.retried: set[str] = set()  # trials whose retry the recover line announced
        self.store_down: float | None = None  # since when the driver has not reached the store, as last shown
        self.log_named = False

    # --- what is shown ----------------------------------------------------------------------------------------
    def name(self, trial) -> str:
        if trial.trial_id not in self.names:
            from tune_losses.tracking.ledger import as_trial

            config = as_trial(trial.config or {})
            if "group" in config:  # a fused group (tuning/fusion.py): its members' values
                params = [m.get("params", {}) for m in config["group"]]
                values = {
                    p: ",".join(f"{m[p]:g}" if isinstance(m.get(p), float) else str(m.get(p)) for m in params)
                    for p in self.paths
                }
                self.names[trial.trial_id] = f"{self._trial_name(self.loss, values)} (fused, {len(params)})"
            else:
                given = config.get("params", {})
                values = {p: given[p] for p in self.paths if p in given}
                base = given.get("baseline")  # the baseline trial (tuning/baseline.py)
                self.names[trial.trial_id] = f"baseline {base}" if base else self._trial_name(self.loss, values)
            self.sizes[trial.trial_id] = members(trial.config)
        return self.names[trial.trial_id]

    def size(self, tid: str) -> int:
        return self.sizes.get(tid, 1)

    @property
    def total_epochs(self) -> int | None:
        if self.total_trials is None or self.total_trials > 10**9:  # Ray's "infinite" samples
            return None
        return self.total_trials * self.epochs - self.unused_epochs

    @property
    def done(self) -> int:
        return sum(epochs * self.size(tid) for tid, epochs in self.epochs_done.items())

    def eta(self, now: float) -> float | None:
        total, left = self.total_epochs, None
        if total is not None and self.first_epoch_at is not None and now > self.first_epoch_at:
            rate = (self.done - self.first_epoch_done) / (now - self.first_epoch_at)
            if rate > 0:
                left = max(total - self.done, 0) / rate
        if self.budget is not None and self.budget.time_budget_s and self.start is not None:
            spare = self.budget.time_budget_s - (now - self.start)
            left = spare if left is None else min(left, spare)
        return left

    def status(self) -> str:
        counts = ", ".join(
            f"{n} {k}" for k, n in self.counts.items() if n or k in ("finished", "failed", "diverged", self.shown_stop)
        )
        of = f" (of {self.total_trials})" if self.total_trials and self.total_trials < 10**9 else ""
        best = ""
        if self.value and self.selects:  # every trial's last value, running ones too (as Ray's "current best trial")
            pick = max if self.mode == "max" else min
            tid = pick(self.value, key=lambda t: self.value[t])
            best = f" | best {self.metric} {_num(self.value[tid])}: {self.names.get(tid, tid)}"
        pending = f"{self.pending} pending, " if self.pending else ""
        running = sum(self.size(tid) for tid in self.running)
        return f"trials: {pending}{running} running, {counts}{of}{best}{self.store_text()}"

    @staticmethod
    def store_text() -> str:
        """While the driver cannot reach the tracking store: since when (trials wait for it too, up to the bound
        of tracking/ledger.py ``retry_seconds``)."""
        from tune_losses.tracking.ledger import STORE

        if STORE.failing_since is None:
            return ""
        return (
            f" | waiting for the tracking store since {time.strftime('%H:%M:%S', time.localtime(STORE.failing_since))}"
        )

    def epochs_text(self, now: float) -> str:
        total = self.total_epochs
        eta = self.eta(now)
        return (
            f"epochs {self.done}/{total if total is not None else '?'}, {_clock(now - (self.start or now))} "
            f"elapsed, ETA {_clock(eta) if eta is not None else '?'}"
        )

    def say(self, text: str) -> None:
        if self.bars:
            from tqdm import tqdm

            tqdm.write(text, file=self.out or sys.stdout)
        else:
            print(text, file=self.out or sys.stdout, flush=True)

    def draw(self, force: bool = False, final: bool = False) -> None:
        """Redraw the bars (``force``: even within 0.5 s of the last time); without bars print the status line every
        ``interval`` seconds and at the end (``final``)."""
        now = time.monotonic()
        if self.bars:
            if not force and now - self.last_draw < 0.5:
                return
            epochs, line = self.bars
            total = self.total_epochs
            if total is not None:
                epochs.total = max(total, self.done)
            epochs.n = self.done
            eta = self.eta(now)
            epochs.set_postfix_str(f"ETA {_clock(eta) if eta is not None else '?'}", refresh=False)
            epochs.refresh()
            line.set_description_str(self.status(), refresh=True)
            self.last_draw = now
        elif final or now - self.last_line >= self.interval:
            self.say(f"[{self.epochs_text(now)}] {self.status()}")
            self.last_line = now

    # --- Ray Tune hooks ---------------------------------------------------------------------------------------
    def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
        from tune_losses.tracking.ledger import STORE

        STORE.listeners.append(self.show_store)  # until on_experiment_end
        self.total_trials = self.configs or total_num_samples
        self.start = self.last_line = time.monotonic()
        if self.use_bar:
            from tqdm import tqdm

            fmt = "epochs {n_fmt}/{total_fmt} |{bar}| {percentage:3.0f}% {elapsed} elapsed{postfix}"
            epochs = tqdm(total=self.total_epochs, bar_format=fmt, position=0, dynamic_ncols=True, leave=True)
            line = tqdm(total=0, bar_format="{desc}", position=1, dynamic_ncols=True, leave=True)
            self.bars = (epochs, line)
            self.draw(force=True)

    def on_step_end(self, iteration, trials, **info):
        self.pending = sum(members(t.config) for t in trials if t.status == "PENDING")
        self.show_store()
        self.draw()

    def show_store(self) -> None:
        """One line when the driver finds the store down, one when it answers again: called at each step and by
        the store's health itself (``STORE.listeners``, from the store watch's thread), since the loop may be
        blocked in a retried tracking call for the whole outage."""
        from tune_losses.tracking.ledger import STORE

        with _STORE_LINES:
            self._show_store(STORE.failing_since)

    def _show_store(self, since: float | None) -> None:
        if since == self.store_down:
            return
        if since is not None and self.store_down is None:
            at = time.strftime("%H:%M:%S", time.localtime(since))
            self.say(f"waiting for the tracking store since {at} (trials paused){self.log_hint()}")
        elif since is None and self.store_down is not None:
            self.say(f"tracking store back after {_clock(time.time() - self.store_down)}")
        self.store_down = since

    def log_hint(self) -> str:
        """Where Ray's and MLflow's own messages went: said with the first fault line only."""
        log = FaultLog.active
        if log is None or self.log_named:
            return ""
        self.log_named = True
        return f" (details: {log.path})"

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        if trial.trial_id in self.retried:  # a retry, announced by its recover line
            self.retried.discard(trial.trial_id)
        elif trial.trial_id in self.started:  # paused at a rung (halving), going on from its checkpoint
            self.say(f"{self.name(trial)}: goes on from epoch {self.epochs_done.get(trial.trial_id, 0)}")
        else:
            self.started.add(trial.trial_id)
            self.say(f"{self.name(trial)}: started")
        self.draw(force=True)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.name(trial)  # its name and size, for the counts
        self.running.add(trial.trial_id)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.name(trial)  # its name and size, for the counts
        tid = trial.trial_id
        epoch = int(result.get("epoch", 0) or 0)
        self.epochs_done[tid] = max(self.epochs_done.get(tid, 0), epoch)
        if self.first_epoch_at is None:
            self.first_epoch_at, self.first_epoch_done = time.monotonic(), self.done
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            self.value[tid] = float(value)
        self.draw()

    def _is_best(self, tid: str) -> bool:
        value = self.value.get(tid)
        if value is None:
            return False
        better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
        if better:
            self.best = (value, self.names.get(tid, tid))
        return better

    def on_trial_complete(self, iteration, trials, trial, **info):
        from tune_losses.tracking import outcome

        tid = trial.trial_id
        self.running.discard(tid)
        name, last = self.name(trial), trial.last_result or {}
        fired = self.budget.fired if self.budget is not None else None
        interrupted = bool(self.budget is not None and self.budget.interrupted)
        ended = outcome.decide(last, self.epochs, budget_fired=fired, scheduler=self.scheduler, interrupted=interrupted)
        epoch = self.epochs_done.get(tid, 0) or ended.epoch
        if ended.status == "superseded":
            pass  # another attempt of this trial goes on: it is counted there
        elif ended.status in ("not_started", "interrupted"):  # stopped while pending, or by Ctrl-C
            self.unused_epochs += (self.epochs - epoch) * self.size(tid)
        else:
            self.unused_epochs += (self.epochs - epoch) * self.size(tid)
            self.say(self._ended_line(tid, name, ended, epoch, int(last.get("members_diverged", 0) or 0)))
        self.draw(force=True)

    def _ended_line(self, tid: str, name: str, ended, epoch: int, diverged: int = 0) -> str:
        """The line of a trial's end; a fused group's members that diverged before it ended (``diverged``) are
        counted as diverged, the others as the group ended."""
        value, n = self.value.get(tid), self.size(tid)
        shown = f"{self.metric} {_num(value)}" if value is not None else f"no {self.metric}"
        if n > 1:  # a fused group reports its best member's value (fused_trial.py); each member's is in its run
            shown = f"best of the {n}: {shown}" + (f", {diverged} diverged" if diverged else "")
            self.counts["diverged"] += diverged
            n -= diverged
        had_best = self.best is not None
        best = " (best so far)" if self._is_best(tid) and had_best and self.selects else ""
        if ended.status == "diverged":
            self.counts["diverged"] += n
            return f"{name}: diverged at epoch {epoch}: {ended.reason or ''}"
        if ended.stopped_early:
            by_budget = ended.stopped_by in ("time_budget", "plateau")
            self.counts["stopped by the budget" if by_budget else self.stopped_key] += n
            why = {"time_budget": "the time budget", "plateau": "the plateau stop"}.get(ended.stopped_by, self.stopper)
            return f"{name}: stopped by {why} at epoch {epoch}, {shown}{best}"
        self.counts["finished"] += n
        return f"{name}: finished {epoch} epochs, {shown}{best}"

    def on_trial_recover(self, iteration, trials, trial, **info):
        from tune_losses.tracking.callback import error_text

        self.retried.add(trial.trial_id)
        last = error_text(trial).strip().splitlines()[-1:] or ["an error"]
        node = self.lost_node(trial)
        if node:
            self.say(f"node {node[:8]} lost: trial {self.name(trial)} {self.goes_on(trial)}{self.log_hint()}")
            return
        self.say(f"{self.name(trial)}: raised ({last[0][:160]}); Ray retries it from its last checkpoint")

    @staticmethod
    def lost_node(trial) -> str | None:
        """The node a trial failed with, when its process went away with that node (else None)."""
        node = (trial.last_result or {}).get("node_id")
        return node if node and lost_process(trial) and node_lost(node) else None

    def goes_on(self, trial) -> str:
        """From which epoch a retried trial goes on: its checkpoint's (read from the sweep's checkpoints)."""
        epoch = checkpoint_epoch(self.checkpoints, trial.config or {})
        if epoch is None:
            return "goes on from its last checkpoint (its epoch is not known here)"
        return f"goes on from epoch {epoch}" if epoch else "starts again from epoch 1 (no checkpoint yet)"

    def on_trial_error(self, iteration, trials, trial, **info):
        from tune_losses.tracking.callback import error_text

        tid = trial.trial_id
        self.running.discard(tid)
        self.counts["failed"] += 1
        self.unused_epochs += self.epochs - self.epochs_done.get(tid, 0)
        last = error_text(trial).strip().splitlines()[-1:] or ["an error"]
        epoch, node = self.epochs_done.get(tid, 0), self.lost_node(trial)
        if node:
            self.say(
                f"node {node[:8]} lost: trial {self.name(trial)} failed at epoch {epoch} (no retry left: "
                f"search.max_failures){self.log_hint()}"
            )
        else:
            self.say(f"{self.name(trial)}: failed at epoch {epoch}: {last[0][:160]}")
        self.draw(force=True)

    def on_experiment_end(self, trials, **info):
        from tune_losses.tracking.ledger import STORE

        with contextlib.suppress(ValueError):
            STORE.listeners.remove(self.show_store)
        self.draw(force=True, final=True)
        if self.bars:
            for bar in self.bars:
                bar.close()
            self.bars = None
        why = f" ({self.budget.describe()})" if self.budget is not None else ""
        self.say(
            f"Sweep ended after {_clock(time.monotonic() - (self.start or time.monotonic()))}{why}: "
            f"{self.done} epochs run"
        )
        if FaultLog.active is not None and FaultLog.active.written:
            self.say(f"Ray's and MLflow's messages of this sweep (faults, retries): {FaultLog.active.path}")

    def __getstate__(self):  # Ray snapshots callbacks with the experiment state: not the terminal's bars
        state = dict(self.__dict__)
        state["bars"] = None
        return state


def members(config: dict | None) -> int:
    """How many configs a Ray trial trains: a fused group's members, else 1."""
    from tune_losses.tracking.ledger import as_trial

    return len(as_trial(config or {}).get("group") or [None])


def lost_process(trial) -> bool:
    """Whether the trial failed because its process went away (its actor died or became unreachable, its
    worker crashed), not because it raised: the error Ray Tune kept for it, as it was raised."""
    import cloudpickle
    from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError

    try:
        with open(trial.pickled_error_file, "rb") as f:
            error = cloudpickle.load(f)
    except Exception:  # none kept, or unreadable: not known to be lost
        return False
    return isinstance(error, RayActorError | NodeDiedError | WorkerCrashedError)


def node_lost(node_id: str, timeout: float = 1.0) -> bool:
    """Whether Ray's node ``node_id`` is gone: marked dead, unknown, or its raylet takes no connection (Ray marks
    a node dead only after missing its heartbeats for seconds; its trials fail at once)."""
    import ray

    from tune_losses.tracking.store import reachable

    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), None)
    if node is None or not node.get("Alive"):
        return True
    return reachable(node["NodeManagerAddress"], int(node["NodeManagerPort"]), timeout) is not None


def checkpoint_epoch(root: str, config: dict) -> int | None:
    """The epoch of the trial's (or fused group's) checkpoint under ``root``, 0 without one; None where it
    cannot be read from here (remote storage, an unreadable file)."""
    from tune_losses.tracking.ledger import as_trial, trial_key
    from tune_losses.training.checkpoint import FILENAME, load_checkpoint

    from .fusion import group_key

    if not root or "://" in root:
        return None
    config = as_trial(config)
    members = config.get("group")
    key = group_key([trial_key(m) for m in members]) if members else trial_key(config)
    if not (Path(root) / key / FILENAME).is_file():
        return 0
    try:
        return int(load_checkpoint(Path(root) / key)["epoch"])
    except Exception:  # torn, or of another format: say so rather than guess
        return None
