"""Who may take another slot of ``max_in_flight`` and which queued job a free worker runs: pure.

A caller is a uid on the ipc sockets (SO_PEERCRED, via libzmq's ``Peer-Address``) or a CURVE
key on the tcp endpoint. Each caller holds at most ``per_client`` slow commands in flight
(root and perfd's own user excepted: they can stop perfd anyway); read-only commands leave
``admin_reserve`` slots to admin commands. Workers are shared the same way: one caller runs
on at most ``workers - 1`` threads, and read-only commands too, so a caller flooding slow
requests (or a request that never ends) always leaves a worker to the others and to admin
commands. Queued jobs are taken admin first, then round robin by caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class Shares:
    """The slots of ``max_in_flight`` held, by caller and by kind of command."""

    def __init__(
        self,
        total: int,
        per_client: int | None = None,
        admin_reserve: int = 0,
        exempt: frozenset[str] = frozenset(),
    ) -> None:
        self.total = total
        self.per_client = per_client if per_client is not None else total
        self.admin_reserve = admin_reserve
        self.exempt = exempt  # callers not held to per_client (root, perfd's own user)
        self._held: dict[int, tuple[str, bool]] = {}  # token -> (client, admin)
        self._by_client: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._held)

    def held_by(self, client: str) -> int:
        return self._by_client.get(client, 0)

    def refusal(self, client: str, admin: bool) -> str | None:
        """Why one more slow command from ``client`` cannot be taken now; None when it can."""
        held = len(self._held)
        if held >= self.total:
            return f"{held} commands in flight (max_in_flight); retry shortly"
        mine = self._by_client.get(client, 0)
        if mine >= self.per_client and client not in self.exempt:
            return (
                f"you have {mine} commands in flight, the most one caller may "
                "(max_in_flight_per_client); wait for their replies"
            )
        if not admin and held >= self.total - min(self.admin_reserve, self.total - 1):
            return (
                f"{held} commands in flight; the rest of max_in_flight is kept for admin "
                "commands (admin_reserve); retry shortly"
            )
        return None

    def hold(self, token: int, client: str, admin: bool) -> None:
        self._held[token] = (client, admin)
        self._by_client[client] = self._by_client.get(client, 0) + 1

    def release(self, token: int) -> None:
        entry = self._held.pop(token, None)
        if entry is None:
            return
        client = entry[0]
        left = self._by_client[client] - 1
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]


@dataclass(frozen=True)
class Queued(Generic[T]):
    job: T
    client: str
    admin: bool


class FairQueue(Generic[T]):
    """Jobs waiting for a worker; ``take`` picks the next one the worker caps allow."""

    def __init__(self, workers: int) -> None:
        self.limit = max(1, workers - 1)  # per caller, and for read-only commands together
        self._queues: dict[str, deque[Queued[T]]] = {}  # insertion order: the round robin
        self._running: dict[str, int] = {}
        self._running_readonly = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def push(self, job: T, client: str, admin: bool) -> None:
        self._queues.setdefault(client, deque()).append(Queued(job, client, admin))

    def take(self) -> Queued[T] | None:
        """The next job to run (marked running), or None when none may run now."""
        for admin_only in (True, False):
            for client, queue in list(self._queues.items()):
                head = queue[0]
                if admin_only and not head.admin:
                    continue
                if self._running.get(client, 0) >= self.limit:
                    continue
                if not head.admin and self._running_readonly >= self.limit:
                    continue
                queue.popleft()
                del self._queues[client]  # to the back of the round robin
                if queue:
                    self._queues[client] = queue
                self._running[client] = self._running.get(client, 0) + 1
                self._running_readonly += not head.admin
                return head
        return None

    def finished(self, item: Queued[T]) -> None:
        left = self._running.get(item.client, 0) - 1
        if left > 0:
            self._running[item.client] = left
        else:
            self._running.pop(item.client, None)
        self._running_readonly -= not item.admin

    def clear(self) -> None:
        self._queues.clear()
