"""A first-come, first-served lock.

``threading.Lock`` makes no promise about which waiter gets the lock next: a thread that
releases it and asks again at once can win over a thread that has been waiting. The narrator
node shares one model between its narration worker and its ask service, and it promises that a
slow answer delays narration by at most one answer (and an ask waits at most one round); that
promise needs waiters served in arrival order, which this lock gives.
"""

from __future__ import annotations

import threading


class FairLock:
    """A mutex that hands itself to waiters in the order they called ``acquire``.

    Use it as a context manager (``with lock:``). Not reentrant.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._next_ticket = 0  # handed to the next caller of acquire()
        self._serving = 0  # ticket that may hold the lock now

    def acquire(self) -> None:
        """Wait for this caller's turn, then hold the lock."""
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            while ticket != self._serving:
                self._condition.wait()

    def release(self) -> None:
        """Hand the lock to the longest waiter (or leave it free)."""
        with self._condition:
            self._serving += 1
            self._condition.notify_all()

    def waiting(self) -> int:
        """Callers that hold or wait for the lock."""
        with self._condition:
            return self._next_ticket - self._serving

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
