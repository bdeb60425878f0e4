"""A wall-clock limit on a block of Python code, by SIGALRM.

Celery's own soft time limit exists only in its prefork pool and ends the whole task; the
batch code needs one that works wherever it runs (prefork, solo, ``htrq transcribe``) and
lets it decide what happens to each page. The alarm interrupts Python between bytecodes:
a C call in progress (one ``generate`` step, an OpenCV filter) finishes first, so the limit
holds to within one such call. PDF rendering, one C call that can take minutes, has its own
limit (``worker.recognition.render``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class TimeLimitExceeded(BaseException):
    """The block ran past its limit.

    A ``BaseException``, as ``KeyboardInterrupt`` is: the code inside the block catches
    ``Exception`` to keep one page's or one line's failure its own, and must not take the
    end of the group's time for such a failure.
    """


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`TimeLimitExceeded` in the block once ``seconds`` have passed.

    Only the main thread receives signals; elsewhere (a threaded pool) the block runs
    without a limit.
    """
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(signum: int, frame: object) -> None:
        raise TimeLimitExceeded(f"over the limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
