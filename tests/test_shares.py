"""Shares of max_in_flight by caller, the admin reserve, and the fair worker queue."""

from __future__ import annotations

from perfd.server.shares import FairQueue, Shares


def test_one_caller_is_held_to_its_share() -> None:
    """A caller past per_client is refused naming the setting; another caller is not."""
    shares = Shares(total=8, per_client=2)
    shares.hold(1, "uid:1000", admin=False)
    shares.hold(2, "uid:1000", admin=False)
    refusal = shares.refusal("uid:1000", admin=False)
    assert refusal is not None
    assert "max_in_flight_per_client" in refusal
    assert shares.refusal("uid:1001", admin=False) is None
    shares.release(1)
    assert shares.refusal("uid:1000", admin=False) is None


def test_read_only_commands_leave_the_admin_reserve() -> None:
    """Read-only commands stop at total - admin_reserve; admin commands go on to total."""
    shares = Shares(total=4, per_client=4, admin_reserve=2)
    shares.hold(1, "a", admin=False)
    shares.hold(2, "b", admin=False)
    refusal = shares.refusal("c", admin=False)
    assert refusal is not None
    assert "admin_reserve" in refusal
    assert shares.refusal("c", admin=True) is None
    shares.hold(3, "c", admin=True)
    shares.hold(4, "d", admin=True)
    assert "max_in_flight" in (shares.refusal("e", admin=True) or "")


def test_a_reserve_as_large_as_the_total_still_leaves_one_slot() -> None:
    """admin_reserve is used as at most total - 1."""
    shares = Shares(total=2, admin_reserve=16)
    assert shares.refusal("a", admin=False) is None
    shares.hold(1, "a", admin=False)
    assert shares.refusal("b", admin=False) is not None


def test_exempt_callers_are_not_held_to_a_share() -> None:
    """root (exempt) may go past per_client, never past the total."""
    shares = Shares(total=3, per_client=1, exempt=frozenset({"uid:0"}))
    shares.hold(1, "uid:0", admin=True)
    assert shares.refusal("uid:0", admin=True) is None
    shares.hold(2, "uid:0", admin=True)
    shares.hold(3, "uid:0", admin=True)
    assert shares.refusal("uid:0", admin=True) is not None


def test_one_caller_never_takes_every_worker() -> None:
    """With 4 workers one caller runs 3 jobs at most; the 4th goes to another caller."""
    queue: FairQueue[str] = FairQueue(workers=4)
    for i in range(6):
        queue.push(f"a{i}", "a", admin=True)
    queue.push("b0", "b", admin=True)
    taken = [queue.take() for _ in range(4)]
    assert [t.job for t in taken if t is not None] == ["a0", "b0", "a1", "a2"]
    assert queue.take() is None  # a holds 3, b's queue is empty
    first = taken[0]
    assert first is not None
    queue.finished(first)
    again = queue.take()
    assert again is not None
    assert again.job == "a3"


def test_admin_jobs_first_and_read_only_never_on_every_worker() -> None:
    """A queued admin job is taken before read-only ones; read-only jobs of many callers
    together run on workers - 1 threads."""
    queue: FairQueue[str] = FairQueue(workers=3)
    for caller in "abc":
        queue.push(f"{caller}-read", caller, admin=False)
    queue.push("d-admin", "d", admin=True)
    jobs = [queue.take() for _ in range(3)]
    assert [j.job for j in jobs if j is not None] == ["d-admin", "a-read", "b-read"]
    assert queue.take() is None
    assert len(queue) == 1
