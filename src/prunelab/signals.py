"""SIGTERM and SIGINT as requests to stop at the next step boundary.

Schedulers, `timeout` and Ctrl-C ask a process to stop with SIGTERM or SIGINT. A training run
should then finish the step it is in, write a resumable checkpoint and exit with one line
saying how to resume. The handler here only records the signal (no IO, no locks: IO inside a
handler can deadlock against the code it interrupts); the Trainer polls `StopRequest.signum`
between steps. Handlers are installed on the main thread only (Python allows nothing else)
and the previous handlers are restored on exit. A second signal while a stop is pending
raises KeyboardInterrupt at once (the last checkpoint stays valid).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped on a signal after writing a resumable checkpoint; `signum` is the signal,
    `message` one line saying where it stopped and how to resume."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.message = message

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (143, 130)."""
        return 128 + int(self.signum)


class StopRequest:
    """The signal received since `stop_on_signals` began (None: keep going)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        """What a signal does; also callable by hand (tests, an embedding application)."""
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[StopRequest]:
    """Within the block, `signals` set the yielded StopRequest instead of stopping the process.
    Off the main thread nothing is installed (the request is never set by a signal)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):  # only records: no IO here
        if request.signum is not None:
            raise KeyboardInterrupt  # asked twice: stop now
        request.signum = signum

    previous = {}
    try:
        for s in signals:
            previous[s] = signal.signal(s, handler)
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
