"""The writer's queue: per-vehicle FIFO queues served round-robin, with a sample budget per group.

:class:`~tcu.ingest.store.SqliteSink` has one writer thread doing group commit. With one FIFO
queue, a vehicle sending maximal batches (1 M samples) put every other vehicle's batch behind
all of its own: another vehicle's ack waited seconds to tens of seconds. Here each vehicle
has its own FIFO (so its batches keep their order), and a group takes one job per vehicle in
turn, round-robin, until it holds ``max_items`` jobs or ``max_samples`` samples (always at
least one job). A vehicle that was served goes to the back of the rotation, also across
groups, so a small vehicle's batch waits for at most one batch of each other vehicle with
work queued, whatever their size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

_J = TypeVar("_J")


class FairQueue(Generic[_J]):
    """Thread-safe: producers :meth:`put`, the one consumer takes :meth:`get_group`."""

    def __init__(self, key: Callable[[_J], str], cost: Callable[[_J], int]) -> None:
        self._key = key
        self._cost = cost
        self._queues: OrderedDict[str, deque[tuple[_J, int]]] = OrderedDict()  # rotation order
        self._size = 0
        self._stopped = False
        self._lock = threading.Condition()

    def qsize(self) -> int:
        return self._size

    def put(self, job: _J) -> None:
        cost = max(1, self._cost(job))
        with self._lock:
            key = self._key(job)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = deque()  # a new vehicle joins at the back
            queue.append((job, cost))
            self._size += 1
            self._lock.notify()

    def stop(self) -> None:
        """After the queued jobs, :meth:`get_group` returns None."""
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def get_group(self, max_items: int, max_samples: int) -> list[_J] | None:
        """Block for work, then take jobs round-robin over vehicles within the bounds.

        None once stopped and empty. A job over the sample budget still makes a group alone.
        """
        with self._lock:
            while not self._size:
                if self._stopped:
                    return None
                self._lock.wait()
            group: list[_J] = []
            samples = 0
            while self._queues and len(group) < max_items:
                key, queue = next(iter(self._queues.items()))
                job, cost = queue[0]
                if group and samples + cost > max_samples:
                    break
                queue.popleft()
                group.append(job)
                samples += cost
                self._size -= 1
                if queue:
                    self._queues.move_to_end(key)  # served: to the back of the rotation
                else:
                    del self._queues[key]
            return group
