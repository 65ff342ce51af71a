"""Group commit inside one process: calls that arrive while a batch is running wait, and the
next batch serves them all with one statement or one round trip.

One caller at a time leads: it runs a batch of everything queued so far, hands each caller
its own result, and passes the lead to the first caller still queued. A call that finds
nobody leading runs at once, so a lone request waits for nothing; under load, one pool
statement is shared by every request that arrived while the previous one ran, and only one
thread per process contends for the pool's write lock.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence


class _Call:
    __slots__ = ("item", "result", "error", "leads", "gate")

    def __init__(self, item):
        self.item = item
        self.result = None
        self.error: BaseException | None = None
        self.leads = False
        self.gate = threading.Lock()
        self.gate.acquire()  # released once: when the result is in, or to hand over the lead

    def outcome(self):
        if self.error is not None:
            raise self.error
        return self.result


class Combiner:
    """submit(item) returns run_batch(items)[i] for this caller's item, items being the
    calls of one batch in arrival order. When run_batch raises, every call in that batch
    raises the same kind of error."""

    def __init__(self, run_batch: Callable[[list], Sequence], max_batch: int = 64):
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._mutex = threading.Lock()
        self._queued: list[_Call] = []
        self._leading = False  # invariant: nothing is queued while nobody leads

    def submit(self, item):
        call = _Call(item)
        with self._mutex:
            self._queued.append(call)
            call.leads = not self._leading
            self._leading = True
        if not call.leads:
            call.gate.acquire()  # a result, or the lead
        if call.leads:
            self._lead(call)
        return call.outcome()

    def _lead(self, leader: _Call) -> None:
        with self._mutex:  # the leader's own call is first in the queue
            batch = self._queued[: self._max_batch]
            del self._queued[: self._max_batch]
        try:
            results = self._run_batch([call.item for call in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} calls gave {len(results)} results")
            for call, result in zip(batch, results, strict=True):
                call.result = result
        except BaseException as exc:  # every caller must hear back, whatever happened
            for call in batch:
                call.error = exc if call is leader else _own_copy(exc)
        finally:
            self._pass_lead()
            for call in batch:
                if call is not leader:
                    call.gate.release()

    def _pass_lead(self) -> None:
        with self._mutex:
            if self._queued:
                successor = self._queued[0]
                successor.leads = True
                successor.gate.release()
            else:
                self._leading = False


def _own_copy(exc: BaseException) -> BaseException:
    """A copy per waiting thread, so no two threads raise (and extend) one traceback."""
    try:
        return copy.copy(exc).with_traceback(None)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is shared
        return exc
