"""SIGINT / SIGTERM during training: finish the step, save, exit; a second signal stops at once.

SIGTERM is what SLURM, Kubernetes and spot instances send before they kill; SIGINT is Ctrl-C.
The first one only sets :attr:`StopSignals.requested`; the training loop reads it (agreed across
ranks) after each optimiser step. A repeat within ``grace`` seconds is the same request arriving
twice (a terminal's Ctrl-C reaches every process, and launchers such as torchrun forward it once
more); a later one ends the process at once with the signal's default action, which cannot leave
``checkpoints/latest`` naming an unfinished checkpoint (train/checkpoints.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + signum


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave stopping to the main process (a Ctrl-C
    reaches them too and would otherwise kill them in the middle of the step being finished)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


class StopSignals:
    """Context manager that turns SIGINT / SIGTERM into a stop request (main thread only)."""

    def __init__(self, announce: bool = True, grace: float = 1.0) -> None:
        self.announce = announce
        self.grace = grace
        self.requested = 0  # the signal number of the first stop request, 0 = none
        self._first_at = 0.0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                # An ignored signal stays ignored: a shell starts background jobs with SIGINT
                # ignored so that a Ctrl-C meant for the foreground does not reach them.
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _say(self, text: str) -> None:
        # os.write: the handler may run while the main thread is inside a print or tqdm write.
        if self.announce:
            os.write(2, f"\n{text}\n".encode())

    def _handle(self, signum: int, _frame) -> None:
        now = time.monotonic()
        name = signal.Signals(signum).name
        if not self.requested:
            self.requested, self._first_at = signum, now
            self._say(
                f"{name} received: finishing the current step, then saving a checkpoint "
                "(send it again to stop at once, without saving)"
            )
            return
        if now - self._first_at < self.grace:
            return
        self._say(f"{name} received again: stopping at once; checkpoints/latest is unchanged")
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


__all__ = ["STOP_SIGNALS", "StopSignals", "exit_code", "ignore_stop_signals"]
