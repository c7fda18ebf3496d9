"""Ctrl-C (and SIGUSR1, a common pre-emption signal) during a sweep: stop the trials cleanly, say how to go on."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Any


class Flag:
    """A threading.Event that Ray Tune can pickle with the run config it saves (a copy starts unset)."""

    def __init__(self):
        self._event = threading.Event()

    def set(self):
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._event = threading.Event()


class Interrupt:
    """Ctrl-C during a sweep. The first stops the sweep through Ray Tune's Stopper API (trials end after their
    current step; each keeps its run and its last checkpoint) and the parent run is tagged ``interrupted``; a
    second exits at once. Ray Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER) so that this
    one sees the first Ctrl-C: Ray Tune would otherwise end the run as if every trial had completed."""

    def __init__(self):
        self.event = Flag()
        self.budget: Any = None  # tuning/budgets.py Budget, told of the interrupt
        self.on_exit: Any = None  # what a second Ctrl-C does before it exits (the sweep ends its parent run)

    def __getstate__(self):
        return {**self.__dict__, "on_exit": None}  # Ray Tune pickles its callbacks: the sweep stays here

    def _last_words(self, seconds: float = 5.0) -> None:
        """``on_exit`` in a thread, for at most ``seconds``: a store that does not answer must not keep a second
        Ctrl-C from exiting."""
        if self.on_exit is None:
            return
        thread = threading.Thread(target=self.on_exit, daemon=True)
        thread.start()
        thread.join(seconds)

    def stopper(self, other=None):
        """A Stopper that ends the sweep after a Ctrl-C (combined with ``other``, the space's budgets, if any)."""
        from ray.tune.stopper import CombinedStopper, Stopper

        event = self.event

        class StopOnInterrupt(Stopper):
            def __call__(self, trial_id, result):
                return False

            def stop_all(self):
                return event.is_set()

        return StopOnInterrupt() if other is None else CombinedStopper(StopOnInterrupt(), other)

    def callback(self):
        """A Ray Tune callback that takes SIGUSR1 (a common pre-emption signal) back from Ray Tune, which installs its
        own handler for it whatever TUNE_DISABLE_SIGINT_HANDLER says, once the run has started."""
        from ray.tune import Callback

        handle = self._handle

        class TakeSignals(Callback):
            def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
                if hasattr(signal, "SIGUSR1") and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGUSR1, handle)

        return TakeSignals()

    def _handle(self, sig, frame):
        if self.budget is not None:
            self.budget.interrupted = True  # the live view and the parent's ended_by say so
        if self.event.is_set():
            print(
                "\nInterrupted again: exiting now. Finished trials and checkpoints are kept; resume with --resume.",
                file=sys.stderr,
                flush=True,
            )
            self._last_words()
            os._exit(130)
        self.event.set()
        print(
            "\nInterrupted: stopping the trials (each keeps its last checkpoint); Ctrl-C again to exit at once.",
            file=sys.stderr,
            flush=True,
        )

    @contextlib.contextmanager
    def catching(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        previous = signal.signal(signal.SIGINT, self._handle)
        usr1 = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        try:
            yield self
        finally:
            if not self.event.is_set():  # after a Ctrl-C the next one still exits at once, until the process ends
                signal.signal(signal.SIGINT, previous)
            if usr1 is not None:
                signal.signal(signal.SIGUSR1, usr1)
            if previous_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = previous_env


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C; its parent run is tagged `interrupted` and `--resume` continues it."""

    def __init__(self, name: str, finished: int, total: int):
        super().__init__(
            f"sweep {name!r} interrupted before any trial started"
            if total == 0
            else f"sweep {name!r} interrupted: {finished} of the {total} trials started had finished; the others "
            "continue from their last checkpoint (or from epoch 1 if they had not finished one)"
        )
        self.name = name
