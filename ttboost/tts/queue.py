"""The fair speech queue: one queue per user, served round-robin; chat and trigger phrases bounded per user."""

from __future__ import annotations

import enum
import heapq
import itertools
from collections import OrderedDict
from typing import Generic, Hashable, Mapping, Protocol, TypeVar


class Lane(enum.IntEnum):
    """Within one user's queue a lower lane is served first."""

    AWAITED = 0  # someone waits for the audio (POST /v2/tts/generate): never shed, its rate limit bounds it
    TRIGGER = 1  # a trigger's phrase: the oldest is shed beyond the per-user trigger bound
    CHAT = 2  # chat read aloud: the oldest is shed beyond the per-user chat bound


class _Keyed(Protocol):
    @property
    def key(self) -> Hashable: ...


J = TypeVar("J", bound=_Keyed)


class _UserQueue(Generic[J]):
    __slots__ = ("lanes", "ticket")

    def __init__(self, ticket: int) -> None:
        self.lanes: tuple[OrderedDict[Hashable, J], ...] = tuple(OrderedDict() for _ in Lane)
        self.ticket = ticket  # matches this user's one live entry in the ready heap

    def __len__(self) -> int:
        return sum(len(lane) for lane in self.lanes)


class FairQueue(Generic[J]):
    """Jobs waiting per user (owner). take() serves the user who was served least recently, one job per turn,
    so a user's flood delays another user's phrase by at most one synthesis per worker.

    A job wanted by several users (the same phrase, voice and rate) waits in each of their queues and is taken
    once: it is shed only when every queue holding it has shed it.
    """

    def __init__(self, bounds: Mapping[Lane, int]) -> None:
        self._bounds = dict(bounds)  # lane -> jobs one user may have waiting there (missing: unbounded)
        self._users: dict[int, _UserQueue[J]] = {}
        self._where: dict[Hashable, dict[int, Lane]] = {}  # job key -> the users (and lanes) it waits for
        self._ready: list[tuple[float, int, int]] = []  # heap of (turn, ticket, owner); ticket breaks ties
        self._turn = 0  # turns served so far
        self._last_owner: int | None = None  # who was served in the latest turn
        self._tickets = itertools.count()

    def __len__(self) -> int:
        """Jobs waiting (each counted once)."""
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def owners(self) -> int:
        """Users with jobs waiting."""
        return len(self._users)

    def waiting(self, owner: int, lane: Lane) -> int:
        queue = self._users.get(owner)
        return len(queue.lanes[lane]) if queue is not None else 0

    def put(self, owner: int, job: J, lane: Lane, *, spare: int = 0) -> list[tuple[J, Lane]]:
        """Queues `job` for `owner` (or moves it to a more urgent lane); returns the jobs this sheds, each
        with the lane it was shed from. `spare` idle workers will take jobs at once: they do not count
        against the bound."""
        where = self._where.setdefault(job.key, {})
        held = where.get(owner)
        if held is not None and held <= lane:
            return []
        queue = self._users.get(owner)
        if queue is None:
            queue = self._users[owner] = _UserQueue(next(self._tickets))
            # A user with nothing waiting goes before the user served last (unless that is itself): it waits for
            # nobody's second turn.
            self._line_up(self._turn if owner == self._last_owner else self._turn - 0.5, owner, queue)
        if held is not None:
            del queue.lanes[held][job.key]
        queue.lanes[lane][job.key] = job
        where[owner] = lane
        shed: list[tuple[J, Lane]] = []
        bound = self._bounds.get(lane)
        if bound is not None:
            allowance = bound + max(0, spare - (len(self) - len(queue.lanes[lane])))
            while len(queue.lanes[lane]) > allowance:
                oldest = next(iter(queue.lanes[lane].values()))
                if self._drop(owner, oldest):
                    shed.append((oldest, lane))
        return shed

    def take(self) -> J | None:
        """The next job to run (now no longer waiting anywhere), or None."""
        while self._ready:
            _, ticket, owner = heapq.heappop(self._ready)
            queue = self._users.get(owner)
            if queue is None or queue.ticket != ticket:
                continue  # stale: that user's queue emptied (its jobs were taken through other users)
            job = next(iter(next(lane for lane in queue.lanes if lane).values()))
            for other in list(self._where[job.key]):
                self._drop(other, job)
            self._turn += 1
            self._last_owner = owner
            queue = self._users.get(owner)
            if queue is not None:  # still has jobs: back in line behind everyone waiting
                queue.ticket = next(self._tickets)
                self._line_up(self._turn, owner, queue)
            return job
        return None

    def clear(self) -> list[J]:
        """Empties the queue; returns every job that was waiting."""
        jobs = {key: job for queue in self._users.values() for lane in queue.lanes for key, job in lane.items()}
        self._users.clear()
        self._where.clear()
        self._ready.clear()
        return list(jobs.values())

    def _line_up(self, turn: float, owner: int, queue: _UserQueue[J]) -> None:
        heapq.heappush(self._ready, (turn, queue.ticket, owner))
        if len(self._ready) > 2 * len(self._users) + 64:  # stale entries of emptied queues: sweep them out
            self._ready = [e for e in self._ready if (q := self._users.get(e[2])) is not None and q.ticket == e[1]]
            heapq.heapify(self._ready)

    def _drop(self, owner: int, job: J) -> bool:
        """Removes the job from one user's queue; True when no other user waits for it any more."""
        where = self._where[job.key]
        lane = where.pop(owner)
        queue = self._users[owner]
        del queue.lanes[lane][job.key]
        if not len(queue):
            del self._users[owner]  # its heap entry goes stale
        if where:
            return False
        del self._where[job.key]
        return True
