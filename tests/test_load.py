"""A real perfd under load: many clients, mixed commands, every reply accounted for.

The load generator is bench/mixedload.py (bench/load.py times the same load); this test asserts
correctness only, never timing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import perfctl
from bench import mixedload
from tests.conftest import StartPerfd

ROOT = str(Path(__file__).resolve().parent.parent)
CLIENTS = 32
REQUESTS = 10_000  # per client
# Two requests in flight per client: 64 at most in all, so slow commands (infer, recommend) can
# never exceed max_in_flight (80 in mixedload.MODEL_CONFIG, room for the default admin_reserve
# of 16 beside the read-only recommend), and no reply may be `busy`.
DEPTH = 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_mixed_load_every_reply_once_right_and_ok(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """32 clients x 10,000 stats/ps/recommend/infer: none lost, doubled, mismatched or failed."""
    perfd = start_perfd(mixedload.MODEL_CONFIG, env={"PYTHONPATH": ROOT})
    logged_at_start = len(perfd.logs())  # start-up warnings (no GPU, no group) are not ours
    load = mixedload.Load(
        admin=f"ipc://{perfd.admin_socket}",
        readonly=f"ipc://{perfd.readonly_socket}",
        clients=CLIENTS,
        requests=REQUESTS,
        depth=DEPTH,
    )
    outcome = mixedload.run(load, tmp_path)

    assert outcome.faults == 0, outcome.summary()
    assert outcome.clients == CLIENTS
    assert set(outcome.sent) == {"stats", "ps", "recommend", "infer"}
    assert sum(outcome.sent.values()) == CLIENTS * REQUESTS
    assert outcome.answered == outcome.sent

    # perfd's own counters agree: every request arrived, none was answered with an error, no
    # reply was dropped. The model loaded once and every infer was one lookup.
    with perfctl.Client(perfd.admin_socket, timeout=30, retries=0) as client:
        counts = client.call("status")["requests"]
        (model,) = client.call("ps")["models"]
    assert counts == {"total": outcome.requests + 1, "errors": 0, "dropped": 0}
    assert (model["name"], model["loads"]) == (mixedload.MODEL, 1)
    assert model["hits"] + model["misses"] == outcome.sent["infer"]
    during = perfd.logs()[logged_at_start:]
    noisy = [e for e in during if e.get("level") in {"warning", "error", "critical"}]
    assert not noisy, noisy[:5]
