"""The mixed load: many clients sending stats, ps, recommend and infer, every reply checked.

    python -m bench.mixedload --admin ipc://.../perfd.sock --readonly ipc://.../perfd-ro.sock \
        --first 0 --clients 16 --requests 10000 --depth 2 --expect perfd

Used by tests/test_load.py (correctness) and bench/load.py (figures). ``run()`` splits the
clients over a few processes of this module, starts them together and merges what they
report. Each process drives its clients from one thread: one DEALER socket per client (its
own connection, so its own routing id in perfd's ROUTER), all on one ``zmq.Poller``. A client
keeps ``depth`` requests in flight and sends the next one when a reply comes. Even-numbered
clients use the admin socket and send all four commands; odd-numbered ones use the read-only
socket, where ``infer`` is forbidden, and send the other three. The commands follow a seeded
random draw per client (``WEIGHTS``), so a run is reproducible.

Every request has a unique id (``<client>-<n>``) and request-specific content: ``infer`` sends
``{"client": c, "n": n}`` to an echo model and must get it back; ``recommend`` asks for a
context that varies with n and must get that context planned. A reply must answer an id its
client has in flight; anything else is counted as a duplicate (answered before) or misrouted
(never sent by this client). Its result must have its command's shape, and it must be ``ok``.
When a client has had all its replies it sends one ``ping`` and waits for it: a late
duplicate queued before that reply is still seen. Requests still unanswered when no reply has
come for ``timeout`` seconds are lost.

With ``--expect echo`` the server is a bare ROUTER that sends every message back
(``bench.echo``): the reply must then be the request's own bytes. That is the benchmark's
baseline, the same load through the same client code.

Protocol with ``run()``: after connecting and the untimed ``--warmup`` requests per client, the
process prints ``ready``, waits for a line on stdin, runs, then prints one JSON object
(``Outcome``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import zmq

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PYTHON, helper_env, stop_process
from perfd.wire import protocol

MODEL = "echo"  # the python-loader model the server must serve: tests.models.toy:make_echo
# 64 requests at most in flight, some of them the read-only recommend: max_in_flight leaves
# room for them beside the default admin_reserve (16), so no reply may be `busy`.
MODEL_CONFIG = f"""
[server]
max_in_flight = 80

[models.{MODEL}]
target = "tests.models.toy:make_echo"
keep_alive = "forever"
"""
RECOMMEND_MODEL = ("llama-3.1-8b", "Llama-3.1-8B")  # (what we ask for, the name it answers)
RECOMMEND_GPU = "H100"  # a catalog GPU: the plan does not depend on this host's GPUs
# Relative weights of the commands. recommend costs about ten times the others in perfd (a
# memory plan with tips, ~1 ms), so it is drawn less often, or it alone would set the pace.
WEIGHTS: dict[str, int] = {"infer": 6, "stats": 4, "ps": 4, "recommend": 2}
ADMIN_COMMANDS = ("infer", "stats", "ps", "recommend")
READONLY_COMMANDS = ("stats", "ps", "recommend")
FLUSH = "ping"
MAX_PROBLEMS = 20  # problem descriptions kept per process (all are counted)


@dataclass
class Outcome:
    """What a load run saw; merged over processes by ``merge()``."""

    clients: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # timed requests per command
    answered: dict[str, int] = field(default_factory=dict)  # their good replies
    warmup: int = 0  # untimed requests (warm-up and flush pings), all checked
    lost: int = 0
    duplicated: int = 0
    misrouted: int = 0
    mismatched: int = 0  # wrong shape or content for its request
    errors: dict[str, int] = field(default_factory=dict)  # error replies by code
    problems: list[str] = field(default_factory=list)
    latencies_ns: dict[str, list[int]] = field(default_factory=dict)
    start_ns: int = 0  # CLOCK_MONOTONIC: comparable between processes
    end_ns: int = 0

    @property
    def requests(self) -> int:
        """Every request sent: the timed ones, warm-ups and flush pings."""
        return sum(self.sent.values()) + self.warmup

    @property
    def faults(self) -> int:
        return (
            self.lost
            + self.duplicated
            + self.misrouted
            + self.mismatched
            + sum(self.errors.values())
        )

    @property
    def elapsed_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def summary(self) -> str:
        """One line for an assertion message."""
        return (
            f"sent {self.sent}, answered {self.answered}, lost {self.lost}, "
            f"duplicated {self.duplicated}, misrouted {self.misrouted}, "
            f"mismatched {self.mismatched}, errors {self.errors}; first problems: "
            f"{self.problems[:MAX_PROBLEMS]}"
        )


def merge(outcomes: Sequence[Outcome]) -> Outcome:
    total = Outcome(start_ns=min(o.start_ns for o in outcomes))
    total.end_ns = max(o.end_ns for o in outcomes)
    for o in outcomes:
        total.clients += o.clients
        total.warmup += o.warmup
        total.lost += o.lost
        total.duplicated += o.duplicated
        total.misrouted += o.misrouted
        total.mismatched += o.mismatched
        for mine, theirs in ((total.sent, o.sent), (total.answered, o.answered)):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        for code, n in o.errors.items():
            total.errors[code] = total.errors.get(code, 0) + n
        for cmd, values in o.latencies_ns.items():
            total.latencies_ns.setdefault(cmd, []).extend(values)
        total.problems += o.problems[: MAX_PROBLEMS - len(total.problems)]
    return total


# -- one client ---------------------------------------------------------------------------------


@dataclass
class _InFlight:
    cmd: str
    sent_ns: int
    expected: Any  # what the reply must carry (see _check); the request bytes for echo
    timed: bool


class _Client:
    """One DEALER socket, its schedule of commands and its requests in flight."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        index: int,
        endpoint: str,
        outcome: Outcome,
        echo: bool,
    ) -> None:
        self.index = index
        self.outcome = outcome  # the driver's: sends are counted there
        self.echo = echo
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        commands = ADMIN_COMMANDS if index % 2 == 0 else READONLY_COMMANDS
        self.rng = random.Random(index)
        self.commands = list(commands)
        self.weights = [WEIGHTS[c] for c in commands]
        self.next_n = 0
        self.in_flight: dict[str, _InFlight] = {}
        self.answered: set[str] = set()
        self.quota = 0  # requests this client still has to send in the current phase
        self.timed = False
        self.flushed = False

    def send_next(self) -> None:
        n = self.next_n
        self.next_n += 1
        self.quota -= 1
        cmd = self.rng.choices(self.commands, self.weights)[0]
        self.send(f"{self.index}-{n}", cmd, _args(cmd, self.index, n), timed=self.timed)

    def flush(self) -> None:
        """Send the untimed ping that ends this client's phase."""
        self.send(f"{self.index}-flush-{self.next_n}", FLUSH, {}, timed=False)
        self.flushed = True

    def send(self, request_id: str, cmd: str, args: dict[str, Any], *, timed: bool) -> None:
        frame = protocol.encode_request(protocol.Request(request_id, cmd, args))
        expected = frame if self.echo else _expectation(cmd, args)
        outcome = self.outcome
        if timed:
            outcome.sent[cmd] = outcome.sent.get(cmd, 0) + 1
        else:
            outcome.warmup += 1
        self.in_flight[request_id] = _InFlight(cmd, time.monotonic_ns(), expected, timed)
        self.sock.send(frame, copy=True)

    def close(self) -> None:
        self.sock.close()


def _args(cmd: str, client: int, n: int) -> dict[str, Any]:
    if cmd == "infer":
        return {"model": MODEL, "inputs": {"client": client, "n": n}}
    if cmd == "recommend":
        # A context of 1024..65535 tokens that changes from one request of a client to the next.
        context = 1024 + (client * 7919 + n * 104729) % 64512
        return {"model": RECOMMEND_MODEL[0], "gpu": RECOMMEND_GPU, "context": context}
    return {}


def _expectation(cmd: str, args: dict[str, Any]) -> Any:
    if cmd == "infer":
        return {"model": MODEL, "outputs": args["inputs"]}
    if cmd == "recommend":
        return args["context"]
    return None


def _check(cmd: str, expected: Any, result: dict[str, Any]) -> str | None:
    """Why ``result`` is not a good answer to the request, or None."""
    if cmd == "infer":
        return None if result == expected else f"infer answered {result!r}, sent {expected!r}"
    if cmd == "recommend":
        got = (result.get("model", {}).get("name"), result.get("recommended", {}).get("context"))
        want = (RECOMMEND_MODEL[1], expected)
        return None if got == want else f"recommend planned {got}, asked {want}"
    if cmd == "stats":
        missing = {"sampled_at", "host", "gpu_state", "cache"} - set(result)
        return f"stats lacks {sorted(missing)}" if missing else None
    if cmd == "ps":
        ok = isinstance(result.get("models"), list) and MODEL in result.get("configured", ())
        return None if ok else f"ps answered {str(result)[:200]}"
    if cmd == FLUSH:
        return None if result.get("pong") is True else f"ping answered {result!r}"
    return f"no check for {cmd}"


# -- one process --------------------------------------------------------------------------------


class Driver:
    """Drives clients ``first .. first + count - 1`` from one thread."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        admin: str,
        readonly: str,
        first: int,
        count: int,
        *,
        depth: int = 2,
        echo: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.depth = depth
        self.echo = echo
        self.timeout = timeout
        self.outcome = Outcome(clients=count)
        self.clients = [
            _Client(ctx, i, admin if i % 2 == 0 else readonly, self.outcome, echo)
            for i in range(first, first + count)
        ]
        self.by_socket = {c.sock: c for c in self.clients}

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def run(self, requests: int, *, timed: bool) -> None:
        """Each client sends ``requests`` requests, ``depth`` at a time, then a flush ping."""
        poller = zmq.Poller()
        active = set()
        if timed:
            self.outcome.start_ns = time.monotonic_ns()
        for client in self.clients:
            client.quota, client.timed, client.flushed = requests, timed, False
            for _ in range(min(self.depth, requests)):
                client.send_next()
            if requests == 0:
                client.flush()
            poller.register(client.sock, zmq.POLLIN)
            active.add(client)
        while active:
            events = poller.poll(int(self.timeout * 1000))
            if not events:
                break
            for sock, _ in events:
                client = self.by_socket[sock]
                if self._receive(client):
                    poller.unregister(client.sock)
                    active.discard(client)
        if timed:
            self.outcome.end_ns = time.monotonic_ns()
        for client in active:  # no reply for `timeout` seconds: what is in flight is lost
            self.outcome.lost += len(client.in_flight)
            for request_id, pending in client.in_flight.items():
                self.outcome.problem(
                    f"client {client.index}: no reply to {request_id} ({pending.cmd})"
                )
            client.in_flight.clear()

    def _receive(self, client: _Client) -> bool:
        """Take every reply queued for ``client``; True once its flush ping is answered."""
        while True:
            try:
                frames = client.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return False
            if not self._reply(client, frames, time.monotonic_ns()):
                continue  # not a reply to a request in flight: nothing to send after it
            if client.quota > 0:
                client.send_next()
            elif not client.in_flight:
                if client.flushed:
                    return True
                client.flush()

    def _reply(self, client: _Client, frames: list[bytes], now: int) -> bool:
        """Check one reply; False when it answers no request of ``client`` in flight."""
        outcome = self.outcome
        body = frames[-1]
        try:
            reply = protocol.decode_reply(body) if not self.echo else None
            request_id = reply.id if reply else json.loads(body)["id"]
        except (protocol.ProtocolError, ValueError, KeyError, TypeError) as exc:
            outcome.mismatched += 1
            outcome.problem(f"client {client.index}: unreadable reply {body[:200]!r}: {exc}")
            return False
        if not isinstance(request_id, str):  # perfd could not tell which request it answers
            code = reply.error_code if reply is not None and not reply.ok else None
            if code is None:
                outcome.mismatched += 1
            else:
                outcome.errors[code] = outcome.errors.get(code, 0) + 1
            outcome.problem(f"client {client.index}: a reply without an id: {body[:200]!r}")
            return False
        pending = client.in_flight.pop(request_id, None)
        if pending is None:
            if request_id in client.answered:
                outcome.duplicated += 1
                outcome.problem(f"client {client.index}: {request_id} answered twice")
            else:
                outcome.misrouted += 1
                outcome.problem(f"client {client.index}: a reply to {request_id}: {body[:200]!r}")
            return False
        client.answered.add(request_id)
        if len(frames) != 1:
            problem: str | None = f"{len(frames)} frames"
        elif reply is None:  # the echo server's
            problem = None if body == pending.expected else f"echo answered {body[:200]!r}"
        elif not reply.ok:
            code = str(reply.error_code)
            outcome.errors[code] = outcome.errors.get(code, 0) + 1
            outcome.problem(
                f"client {client.index}: {request_id} ({pending.cmd}): {code}: "
                f"{reply.error_message}"
            )
            return True
        else:
            try:
                problem = _check(pending.cmd, pending.expected, reply.result or {})
            except (AttributeError, TypeError) as exc:  # a section of the wrong type
                problem = f"{exc!r} in {str(reply.result)[:200]}"
        if problem is not None:
            outcome.mismatched += 1
            outcome.problem(f"client {client.index}: {request_id} ({pending.cmd}): {problem}")
            return True
        if pending.timed:
            outcome.answered[pending.cmd] = outcome.answered.get(pending.cmd, 0) + 1
            outcome.latencies_ns.setdefault(pending.cmd, []).append(now - pending.sent_ns)
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.mixedload")
    parser.add_argument("--admin", required=True, help="endpoint of the even clients")
    parser.add_argument("--readonly", required=True, help="endpoint of the odd clients")
    parser.add_argument("--first", type=int, default=0, help="index of the first client")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per client")
    parser.add_argument("--warmup", type=int, default=0, help="untimed requests per client")
    parser.add_argument("--depth", type=int, default=2, help="requests in flight per client")
    parser.add_argument("--expect", choices=("perfd", "echo"), default="perfd")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds without a reply")
    args = parser.parse_args(argv)

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    driver = Driver(
        ctx,
        args.admin,
        args.readonly,
        args.first,
        args.clients,
        depth=args.depth,
        echo=args.expect == "echo",
        timeout=args.timeout,
    )
    try:
        driver.run(args.warmup, timed=False)
        print("ready", flush=True)
        sys.stdin.readline()
        driver.run(args.requests, timed=True)
    finally:
        driver.close()
        ctx.term()
    print(json.dumps(asdict(driver.outcome)), flush=True)
    return 0


# -- several processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """A load: ``clients`` clients over ``processes`` processes, ``requests`` each."""

    admin: str
    readonly: str
    clients: int = 32
    requests: int = 10_000
    warmup: int = 0
    depth: int = 2
    processes: int = 2
    expect: str = "perfd"
    timeout: float = 30.0


def run(load: Load, cwd: Path) -> Outcome:
    """Run ``load`` (processes of this module, started together); the merged outcome.

    Raises RuntimeError when a process fails (its stderr in the message).
    """
    procs: list[subprocess.Popen[str]] = []
    share, extra = divmod(load.clients, load.processes)
    first = 0
    try:
        for index in range(load.processes):
            count = share + (index < extra)
            argv = [
                PYTHON,
                "-m",
                "bench.mixedload",
                f"--admin={load.admin}",
                f"--readonly={load.readonly}",
                f"--first={first}",
                f"--clients={count}",
                f"--requests={load.requests}",
                f"--warmup={load.warmup}",
                f"--depth={load.depth}",
                f"--expect={load.expect}",
                f"--timeout={load.timeout}",
            ]
            first += count
            procs.append(
                subprocess.Popen(
                    argv,
                    env=helper_env(),
                    cwd=cwd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:  # every process has connected and warmed up
            _expect_line(proc, "ready")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes = []
        for proc in procs:
            out, err = proc.communicate(timeout=max(600.0, load.timeout * 4))
            if proc.returncode != 0:
                raise RuntimeError(f"load process exited {proc.returncode}: {err[-3000:]}")
            outcomes.append(Outcome(**json.loads(out)))
        return merge(outcomes)
    finally:
        for proc in procs:
            stop_process(proc)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def _expect_line(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    if got != line:
        stop_process(proc)
        assert proc.stderr is not None
        raise RuntimeError(f"load process said {got!r}, not {line!r}: {proc.stderr.read()[-3000:]}")


if __name__ == "__main__":
    sys.exit(main())
