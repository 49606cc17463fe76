"""Malformed messages for a real perfd, and a driver that checks every reply (tests/test_fuzz.py).

- ``Generator``: a seeded ``random.Random`` making messages of each category in CATEGORIES
  (random bytes, truncated and big frames, extra frames, JSON of the wrong shape, deep
  nesting, wrong versions, unknown commands, bad envelopes, arguments for every command).
- ``args_strategy``: hypothesis strategies for one command's arguments, built from the types
  its Command declares (and the wrong types), for the hypothesis-driven part.
- ``expect``: how perfd must answer one message on one socket. perfd's own protocol module and
  command table say which error a malformed request gets and with which id; a request that
  reaches a handler may get any well-formed reply except ``internal``.
- ``Fuzzer``: DEALER sockets on both perfd sockets with many requests in flight; it matches
  each reply to its request and records every reply that is not well-formed or not expected.

Safety: a ``load`` never names an importable module (targets other than SAFE_TARGET are
prefixed with NO_MODULE) nor an existing path (paths start with NO_DIR, without another "/").
"""

from __future__ import annotations

import collections
import json
import math
import random
import string
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from perfd.handlers import table as handlers
from perfd.recommend import catalog, precision
from perfd.server.commands import Command
from perfd.wire import protocol
from perfd.wire.values import MAX_FRAMES

SAFE_TARGET = "tests.models.toy:make_echo"
NO_MODULE = "fuzz_no_such_module_"
NO_DIR = "/fuzz-no-such-dir/"
ADMIN_LIMIT = 4 << 20  # max_admin_message_bytes in CONFIG: oversize frames stay cheap

CONFIG = f"""
[server]
max_admin_message_bytes = {ADMIN_LIMIT}
[models.echo]
target = "{SAFE_TARGET}"
[models.upper]
target = "tests.models.toy:make_upper"
[models.doubler]
target = "tests.models.toy:make_doubler"
[models.broken]
target = "tests.models.toy:make_failing"
[models.pinned]
target = "{SAFE_TARGET}"
pin = true
"""
CONFIGURED = ("echo", "upper", "doubler", "broken", "pinned")
RUNTIME = tuple(f"fz-{i}" for i in range(8))  # run-time models (SAFE_TARGET), loaded for real

CATEGORIES = (
    "random_bytes",
    "truncated",
    "big_frame",
    "extra_frames",
    "wrong_shape",
    "deep_nesting",
    "wrong_version",
    "unknown_command",
    "bad_envelope",
    "command_args",
)
# Relative weights for Generator.message(): most messages exercise the commands' arguments.
WEIGHTS = (10, 8, 0.3, 6, 12, 4, 6, 8, 3, 42.7)


class _View:
    """Just enough of a daemon to build the command table and read its declared args."""

    started_at = 0.0
    started_monotonic = 0.0
    runtime_dir = Path("/run/perfd")
    loaded = None
    monitor = None


COMMANDS: dict[str, Command] = handlers.build(_View())  # type: ignore[arg-type]

# -- values ----------------------------------------------------------------------------------

NAMES = (*CONFIGURED, *RUNTIME)
CATALOG_MODELS = tuple(name for name, _, _, _ in catalog.MODELS) + tuple(
    alias for _, _, aliases, _ in catalog.MODELS for alias in aliases
)
CATALOG_CONFIGS = tuple(cfg for _, _, _, cfg in catalog.MODELS)
GPU_NAMES = (*(gpu.name for gpu in catalog.GPUS), "H100", "a100", "4090", "48GiB", "0", "0,1")
WORDS = NAMES + CATALOG_MODELS + GPU_NAMES
STRINGS = (
    "",
    " ",
    "x",
    "ping",
    "cpu",
    "cuda:0",
    "cpu\n",
    "cuda:0\n",
    "cuda:-1",
    "cuda:99999999999999999999",
    "CPU",
    "0",
    "-1",
    "0,1",
    "1,,2",
    "24GiB",
    "0B",
    "-1GiB",
    "1e400GiB",
    "nanGiB",
    "infGiB",
    "1" * 400 + "GiB",
    "fp8",
    "fp16",
    "q4_0",
    "Q4_K_M",
    "int3",
    "vllm",
    "llama.cpp",
    "tgi",
    "python",
    "onnx",
    "openai",
    "\x00",
    "\ud800",
    "é🙂",
    "\u202e\u200b",
    "null",
    "{}",
    "$frame",
    "%s%n{0}",
    "../..",
    "a" * 129,
)
INTS = (
    0,
    1,
    -1,
    2,
    3,
    64,
    65,
    4096,
    2**31 - 1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    10**30,
    -(10**30),
    10**300,
    10**309,
    -(10**309),
    10**4299,  # the most digits a Python int may have in JSON (4300)
)
FLOATS = (0.0, -0.0, 0.5, 0.9, 1.0, 1.0000001, -1.5, 1e-300, 5e-324, 1e308, -1e308, 1.5e300)
NON_FINITE = (math.nan, math.inf, -math.inf)  # not JSON: perfd answers bad_request
METHODS = ("__call__", "__init__", "encode", "close", "nope", "1x", "", "a b")
# Nesting that json reads (or fails to read) the same in perfd and in this test, whatever the
# stack depth of either; Generator.nesting_sweep covers the depths in between.
SURE_DEPTHS = (10, 100, 500, 800, 1100, 5000, 100_000)
DTYPES = ("float32", "<f4", ">f8", "int64", "uint8", "bool", "O", "V0", "S0", "U3", "M8", "x")


class Raw:
    """JSON text that json_text puts into a message as it is (nesting deeper than json.dumps
    can write)."""

    def __init__(self, text: bytes) -> None:
        self.text = text


def json_text(value: Any) -> bytes:
    """JSON as Python writes it (NaN and Infinity included: perfd must refuse those)."""
    raws: list[bytes] = []

    def default(obj: object) -> str:
        if not isinstance(obj, Raw):
            raise TypeError(type(obj).__name__)
        raws.append(obj.text)
        return f"\0raw{len(raws) - 1}\0"

    text = json.dumps(value, separators=(",", ":"), default=default).encode()
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\0raw{i}\0").encode(), raw, 1)
    return text


def nested(depth: int) -> Raw:
    """A list ``depth`` deep, as JSON text."""
    return Raw(b"[" * depth + b"0" + b"]" * depth)


class Generator(random.Random):
    """Seeded malformed messages: ``message()`` is (category, the DEALER's frames)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self._ids = 0

    # -- ids ------------------------------------------------------------------------------

    def request_id(self) -> str:
        """A valid id, unique in this generator (the Fuzzer matches replies by it)."""
        self._ids += 1
        prefix = self.choice(("", "", "", "é🙂", "\ud800", " ", '"', "\\", "\x00", "x" * 100))
        return f"{prefix}{self._ids}"

    def bad_id(self) -> Any:
        return self.choice((None, 7, 1.5, True, [], {}, [self.request_id()], "y" * 129))

    # -- values ---------------------------------------------------------------------------

    def string(self) -> str:
        roll = self.random()
        if roll < 0.5:
            return self.choice(STRINGS)
        if roll < 0.8:
            alphabet = string.printable if self.random() < 0.5 else "aé🙂\u0000\ud800\uffff\n"
            return "".join(self.choices(alphabet, k=self.randint(1, 40)))
        if roll < 0.98:
            return self.choice(WORDS)
        return "z" * self.choice((1000, 70_000))

    def integer(self) -> int:
        return self.choice(INTS) if self.random() < 0.6 else self.randint(-100, 10**6)

    def floating(self) -> float:
        return self.choice(FLOATS) if self.random() < 0.6 else self.uniform(-2, 2)

    def scalar(self) -> Any:
        kind = self.randrange(6)
        if kind == 0:
            return None
        if kind == 1:
            return self.random() < 0.5
        if kind == 2:
            return self.integer()
        if kind == 3:
            return self.floating()
        return self.string()

    def value(self, depth: int = 0) -> Any:
        """Any JSON value, a few levels deep at most."""
        roll = self.random()
        if depth >= 3 or roll < 0.6:
            return self.scalar()
        if roll < 0.8:
            return [self.value(depth + 1) for _ in range(self.randint(0, 4))]
        return self.obj(depth + 1)

    def obj(self, depth: int = 0) -> dict[str, Any]:
        return {self.string(): self.value(depth) for _ in range(self.randint(0, 4))}

    def model_config(self) -> dict[str, Any]:
        """A catalog config.json with a few fields broken."""
        config = dict(self.choice(CATALOG_CONFIGS))
        for _ in range(self.randint(0, 3)):
            key = self.choice([*config, "quantization_config", "sliding_window", "head_dim"])
            if self.random() < 0.2:
                config.pop(key, None)
            else:
                config[key] = self.choice(
                    (0, -1, 1, 10**30, 10**300, 0.5, 1e308, "", "bf16", None, [], {}, True)
                )
        return config

    # -- arguments ------------------------------------------------------------------------

    def typed(self, name: str, types: tuple[type, ...]) -> Any:
        """A value of one of ``types`` (mostly), shaped like what ``name`` usually holds."""
        if name == "model":
            return self.choice(NAMES + CATALOG_MODELS) if self.random() < 0.8 else self.string()
        if name == "target":
            return SAFE_TARGET if self.random() < 0.5 else self.string()
        if name == "path":
            return self.string()
        if name == "loader":
            return self.choice(("python", "python", "onnx", "openai", self.string()))
        if name == "device":
            devices = ("cpu", "cpu", "cuda:0", "cuda:9", self.string())
            return self.choice(devices)
        if name == "config":
            return self.model_config() if self.random() < 0.8 else self.obj()
        if name == "gpu" and self.random() < 0.6:
            return self.choice(GPU_NAMES)
        if name == "options" and self.random() < 0.3:
            return {"method": self.choice(METHODS)}
        kind = self.choice(types)
        if kind is bool:
            return self.random() < 0.5
        if kind is int:
            return self.integer()
        if kind is float:
            return self.floating()
        if kind is str:
            return self.string()
        if kind is dict:
            return self.obj()
        if kind is list:
            return [self.value() for _ in range(self.randint(0, 3))]
        return self.value()

    def args(self, command: Command) -> dict[str, Any]:
        """Arguments for ``command``: right and wrong types, unknown and missing names."""
        if command.name == "recommend" and self.random() < 0.5:
            return self.plausible_recommend()
        args: dict[str, Any] = {}
        for name, types in command.args.items():
            if self.random() < (0.95 if name in command.required else 0.35):
                good = self.random() < 0.8
                args[name] = self.typed(name, types) if good else self.value()
        if self.random() < 0.07:
            args[self.string()] = self.value()
        if self.random() < 0.03:
            args["inputs"] = nested(self.choice(SURE_DEPTHS))
        return safe_args(command.name, args)

    def plausible_recommend(self) -> dict[str, Any]:
        """recommend arguments that mostly make sense, so the planner runs to its end."""
        args: dict[str, Any] = (
            {"model": self.choice(CATALOG_MODELS)}
            if self.random() < 0.7
            else {"config": self.model_config()}
        )
        choices: dict[str, tuple[Any, ...]] = {
            "gpu": (*GPU_NAMES, 0),
            "gpus": (0, 1, 2, 8, 1024, 1025, -1),
            "memory": ("64GiB", "1GiB", 1, 10**30),
            "context": (512, 4096, 131072, 1, 10**12),
            "quant": tuple(precision.WEIGHT_FORMATS),
            "kv_dtype": tuple(precision.KV_FORMATS),
            "engine": ("vllm", "llama.cpp", "ollama"),
            "utilization": (0.5, 0.9, 1, 1e-300),
            "kv_budget": ("8GiB", 10**9, 1),
        }
        for name, values in choices.items():
            if self.random() < 0.3:
                args[name] = self.choice(values)
        return args

    # -- messages -------------------------------------------------------------------------

    def message(self) -> tuple[str, list[bytes]]:
        category = self.choices(CATEGORIES, WEIGHTS)[0]
        frames = getattr(self, f"_{category}")()
        return category, frames

    def messages(self, count: int) -> Iterator[tuple[str, list[bytes]]]:
        for _ in range(count):
            yield self.message()

    def request(self, cmd: str | None = None, args: dict[str, Any] | None = None) -> bytes:
        cmd = self.choice(list(COMMANDS)) if cmd is None else cmd
        if args is None:
            args = self.args(COMMANDS[cmd]) if cmd in COMMANDS else {}
        return json_text({"v": 1, "id": self.request_id(), "cmd": cmd, "args": args})

    def envelope(self, *body: bytes) -> list[bytes]:
        """DEALER frames: usually with the empty delimiter a REQ socket would add."""
        return [b"", *body] if self.random() < 0.85 or not body[0] else list(body)

    def _random_bytes(self) -> list[bytes]:
        size = self.choice((0, 1, 2, 8, 64, 300, 4000)) if self.random() < 0.95 else 60_000
        frame = self.randbytes(size)
        if self.random() < 0.3:
            frame = b"{" + frame  # looks like JSON for one byte
        return self.envelope(frame)

    def _truncated(self) -> list[bytes]:
        whole = self.request()
        return self.envelope(whole[: self.randrange(len(whole))])

    def _big_frame(self) -> list[bytes]:
        size = self.randint(100_000, protocol.DEFAULT_MAX_MESSAGE_BYTES - 1000)
        if self.random() < 0.5:
            return self.envelope(self.randbytes(size))
        text = self.choice(("a", "é", "\ud800")) * (size // 8)
        args = {"model": "echo", "inputs": text} if self.random() < 0.5 else {"x": text}
        return self.envelope(self.request("infer", args))

    def _extra_frames(self) -> list[bytes]:
        count = self.choice((1, 2, 3, MAX_FRAMES, MAX_FRAMES + 1))
        if self.random() < 0.5:  # infer, the one command that takes frames
            frames = [self.randbytes(self.choice((0, 3, 4, 8, 16, 24))) for _ in range(count)]
            arrays = [self.array_meta() for _ in range(count + self.choice((0, 0, 0, -1, 1)))]
            index = self.choice((0, count - 1, count, -1, "0", None, 1.5))
            inputs = self.choice(({"$frame": index}, [{"$frame": 0}, 1], {"a": {"$frame": 0}}))
            model = self.choice(("echo", "doubler", "upper", "fz-0", "nope"))
            args = {"model": model, "inputs": inputs, "arrays": arrays}
            if self.random() < 0.1:
                args = self.args(COMMANDS["infer"])
            return self.envelope(self.request("infer", args), *frames)
        extra = [self.randbytes(self.randint(0, 16)) for _ in range(count)]
        return self.envelope(self.request(), *extra)

    def array_meta(self) -> Any:
        if self.random() < 0.1:
            return self.value()
        shape = self.choice(
            ([], [1], [2], [4], [2, 2], [-1], [0], [10**30], [1.5], [math.inf], [math.nan], ["2"])
        )
        meta: dict[str, Any] = {"dtype": self.choice(DTYPES), "shape": shape}
        if self.random() < 0.1:
            meta["dtype"] = self.value()
        if self.random() < 0.05:
            del meta[self.choice(("dtype", "shape"))]
        return meta

    def _wrong_shape(self) -> list[bytes]:
        valid = {"v": 1, "id": self.request_id(), "cmd": "ping", "args": {}}
        roll = self.randrange(8)
        body: Any
        if roll == 0:  # not an object
            body = self.choice(([], [valid], "ping", 1, None, True, 1.5))
        elif roll == 1:  # a key missing
            body = dict(valid)
            del body[self.choice(("v", "id", "cmd", "args"))]
        elif roll == 2:  # an unknown key
            body = {**valid, self.string() or "extra": self.value()}
        elif roll == 3:
            body = {**valid, "id": self.bad_id()}
        elif roll == 4:
            body = {**valid, "cmd": self.choice((None, 1, [], {}, "", True, ["ping"]))}
        elif roll == 5:
            body = {**valid, "args": self.choice((None, [], "x", 1, True, [["model", "echo"]]))}
        elif roll == 6:  # a number or constant that is not JSON
            body = {**valid, "args": {"x": self.choice(NON_FINITE)}}
            if self.random() < 0.5:
                too_long = b"9" * 4301  # Python reads at most 4300 digits
                return self.envelope(json_text(valid)[:-2] + b'"n":' + too_long + b"}}")
        else:  # duplicate keys: the last one wins, as in Python's json
            return self.envelope(b'{"v":1,"v":2,"id":"%d","cmd":"ping"}' % self.randrange(10**9))
        return self.envelope(json_text(body))

    def _deep_nesting(self) -> list[bytes]:
        depth = self.choice(SURE_DEPTHS)
        roll = self.randrange(4)
        if roll == 0:  # bare brackets, not even closed
            return self.envelope(self.choice((b"[", b'{"a":')) * depth)
        if roll == 1:  # a whole nested value, not a request
            return self.envelope(b"[" * depth + b"]" * depth)
        if roll == 2:  # nested inside an argument that reaches a handler
            cmd = self.choice(("infer", "recommend", "load"))
            return self.envelope(self.request(cmd, nesting_args(cmd, depth)))
        return self.envelope(self.request("ping", {"x": nested(depth)}))

    def nesting_sweep(self, depths: Iterable[int]) -> Iterator[tuple[str, list[bytes]]]:
        """Values nested ``depths`` deep, where perfd's stack depth decides whether json can
        read or write them: each is sent alone (Fuzzer.one_by_one), since its reply may carry its id
        or none."""
        for depth in depths:
            for cmd in ("ping", "infer", "recommend", "load"):
                args = nesting_args(cmd, depth) if cmd != "ping" else {"x": nested(depth)}
                yield "deep_nesting", [b"", self.request(cmd, args)]

    def _wrong_version(self) -> list[bytes]:
        version = self.choice((0, 2, -1, 10**30, 1.0, 1.5, "1", True, None, [1], {"v": 1}))
        body = {"v": version, "id": self.request_id(), "cmd": self.choice(list(COMMANDS))}
        return self.envelope(json_text(body))

    def _unknown_command(self) -> list[bytes]:
        known = self.choice(list(COMMANDS))
        cmd = self.choice(
            (
                known.upper(),
                f" {known}",
                f"{known}\x00",
                known[:-1],
                "help",
                "__init__",
                "",
                "shutdown",
                "exec",
                "é🙂",
                "\ud800",
                "c" * 10_000,
            )
        )
        return self.envelope(self.request(cmd, {"model": "echo"} if self.random() < 0.3 else {}))

    def _bad_envelope(self) -> list[bytes]:
        request = self.request("ping", {})
        return self.choice(
            ([b""], [b"", b""], [b"", b"", request], [b"", b"", b""], [b"x", request], [request])
        )

    def _command_args(self) -> list[bytes]:
        return self.envelope(self.request())


def nesting_args(cmd: str, depth: int) -> dict[str, Any]:
    """Arguments of ``cmd`` holding a value about ``depth`` deep where a handler takes it."""
    if cmd == "infer":
        return {"model": "echo", "inputs": nested(depth)}
    if cmd == "recommend":
        return {"model": "llama-3.1-8b", "config": {"a": nested(depth - 1)}}
    return {"model": "fz-1", "target": SAFE_TARGET, "options": {"a": nested(depth - 1)}}


def safe_args(cmd: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` that cannot import a real module or open a real path (see the module doc)."""
    if cmd != "load":
        return args
    target = args.get("target")
    if isinstance(target, str) and target != SAFE_TARGET:
        args["target"] = NO_MODULE + target
    path = args.get("path")
    if isinstance(path, str):
        args["path"] = NO_DIR + path.replace("/", "_")
    return args


# -- hypothesis ------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(INTS)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def _typed(name: str, types: tuple[type, ...]) -> st.SearchStrategy[Any]:
    by_type: dict[type, st.SearchStrategy[Any]] = {
        bool: st.booleans(),
        int: st.integers() | st.sampled_from(INTS),
        float: st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(FLOATS),
        str: st.text() | st.sampled_from(STRINGS) | st.text(min_size=1000, max_size=3000),
        dict: st.dictionaries(st.text(), JSON_VALUES, max_size=5),
        list: st.lists(JSON_VALUES, max_size=4),
    }
    typed = st.one_of([by_type.get(t, JSON_VALUES) for t in types])
    special = {
        "model": st.sampled_from(NAMES + CATALOG_MODELS),
        "target": st.just(SAFE_TARGET),
        "loader": st.sampled_from(("python", "onnx", "openai")),
        "device": st.sampled_from(("cpu", "cuda:0")),
        "config": st.sampled_from(CATALOG_CONFIGS).flatmap(
            lambda cfg: st.fixed_dictionaries(
                {}, optional={k: st.just(v) | JSON_SCALARS for k, v in cfg.items()}
            )
        ),
        "gpu": st.sampled_from(GPU_NAMES),
        "options": st.fixed_dictionaries({"method": st.sampled_from(METHODS)}),
        "arrays": st.lists(
            st.fixed_dictionaries(
                {"dtype": st.sampled_from(DTYPES), "shape": st.lists(st.integers(), max_size=3)}
            ),
            max_size=2,
        ),
    }
    if name in special:
        return special[name] | typed
    return typed


def args_strategy(command: Command) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments for ``command`` from its declared types: right, wrong, unknown, missing."""
    values = {name: _typed(name, types) | JSON_VALUES for name, types in command.args.items()}
    declared = st.fixed_dictionaries(
        {}, optional={**values, "_unknown": JSON_VALUES} if values else {"_unknown": JSON_VALUES}
    )
    return declared.map(lambda args: safe_args(command.name, args))


# -- what perfd must answer ------------------------------------------------------------------


@dataclass
class Expect:
    """How perfd must answer one message: its id, envelope and error code (None: a handler's
    answer, anything but ``internal``)."""

    request_id: str | None
    delimited: bool
    code: str | None
    command: Command | None = None
    frames_in: int = 0


def _wrong_type(value: Any, types: tuple[type, ...]) -> bool:
    return not isinstance(value, types) or (isinstance(value, bool) and bool not in types)


def expect(frames: list[bytes], readonly: bool) -> Expect:
    """What perfd must answer to the DEALER frames ``frames`` on one socket (docs/protocol.md:
    the order in which a request is checked)."""
    delimited = bool(frames) and frames[0] == b""
    body = frames[1:] if delimited else frames
    if not body:
        return Expect(None, delimited, protocol.BAD_REQUEST)
    try:
        request = protocol.decode_request(body[0])
    except protocol.ProtocolError as exc:
        return Expect(exc.request_id, delimited, exc.code)
    command = COMMANDS.get(request.cmd)
    rid = request.id
    if command is None:
        return Expect(rid, delimited, protocol.UNKNOWN_COMMAND)
    if readonly and command.admin:
        return Expect(rid, delimited, protocol.FORBIDDEN)
    args = request.args
    if (
        set(args) - set(command.args)
        or command.required - set(args)
        or any(_wrong_type(v, command.args[k]) for k, v in args.items())
    ):
        return Expect(rid, delimited, protocol.INVALID_ARGS)
    extra = len(body) - 1
    if extra and (not command.frames or extra > MAX_FRAMES):
        return Expect(rid, delimited, protocol.BAD_REQUEST)
    return Expect(rid, delimited, None, command, extra)


def strict_json(payload: bytes) -> Any:
    """Parse ``payload`` as RFC 8259 JSON: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(payload, parse_constant=refuse)


# -- the driver ------------------------------------------------------------------------------


@dataclass
class _Sent:
    category: str
    frames: list[bytes]
    expect: Expect

    def describe(self) -> str:
        body = self.frames[1:] if self.expect.delimited else self.frames
        text = repr(body[0][:300]) if body else "(no body)"
        return f"{self.category} ({len(self.frames)} frames): {text}"


@dataclass
class Lane:
    """One DEALER socket on one perfd socket and what it has in flight."""

    sock: zmq.Socket[bytes]
    readonly: bool
    by_id: dict[str, _Sent] = field(default_factory=dict)
    anonymous: collections.deque[_Sent] = field(default_factory=collections.deque)

    @property
    def in_flight(self) -> int:
        return len(self.by_id) + len(self.anonymous)


@dataclass
class Tally:
    """What was sent and what came back."""

    sent: collections.Counter[str] = field(default_factory=collections.Counter)  # category
    by_socket: collections.Counter[str] = field(default_factory=collections.Counter)
    replies: collections.Counter[str] = field(default_factory=collections.Counter)  # ok / code
    handled: collections.Counter[str] = field(default_factory=collections.Counter)  # cmd: code
    samples: dict[str, list[str]] = field(default_factory=dict)  # cmd: code -> a few messages
    errors: int = 0

    @property
    def total(self) -> int:
        return sum(self.sent.values())


class Fuzzer:
    """Sends messages over ``lanes`` DEALERs per perfd socket with up to ``window`` each in
    flight, at most ``slow_cap`` of them slow commands (under server.max_in_flight, so they are
    not refused `busy`), and checks every reply."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        admin: Path,
        readonly: Path,
        *,
        lanes: int = 2,
        window: int = 48,
        slow_cap: int = 56,
        reply_timeout: float = 60.0,
    ) -> None:
        self.ctx = ctx
        self.paths = {False: admin, True: readonly}
        self.window, self.slow_cap, self.reply_timeout = window, slow_cap, reply_timeout
        self.lanes: list[Lane] = []
        for _ in range(lanes):
            for is_ro in (False, True):
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(f"ipc://{self.paths[is_ro]}")
                self.lanes.append(Lane(sock, is_ro))
        self.poller = zmq.Poller()
        for lane in self.lanes:
            self.poller.register(lane.sock, zmq.POLLIN)
        self.tally = Tally()
        self.failures: list[str] = []
        self.internal: list[str] = []
        self.pings: list[float] = []
        self.delivered = 0  # messages that reach perfd's loop (its requests.total)
        self._slow = 0
        self._turn = 0

    def close(self) -> None:
        for lane in self.lanes:
            lane.sock.close(0)

    def __enter__(self) -> Fuzzer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- sending --------------------------------------------------------------------------

    def run(self, messages: Iterable[tuple[str, list[bytes]]], *, ping_every: int = 0) -> None:
        """Send every message, spread over the lanes, and wait for every reply; every
        ``ping_every`` messages, ping (on each socket in turn) with the fuzz in flight."""
        for count, (category, frames) in enumerate(messages, 1):
            if ping_every and count % ping_every == 0:
                assert self.call("ping", readonly=count // ping_every % 2 == 0).ok
            lane = self.lanes[self._turn % len(self.lanes)]
            self._turn += 1
            exp = expect(frames, lane.readonly)
            slow = exp.command is not None and exp.command.slow
            while lane.in_flight >= self.window or (slow and self._slow >= self.slow_cap):
                self._receive(self.reply_timeout)
            sent = _Sent(category, frames, exp)
            if exp.request_id is None:
                lane.anonymous.append(sent)
            else:
                assert exp.request_id not in lane.by_id, f"duplicate id {exp.request_id!r}"
                lane.by_id[exp.request_id] = sent
            self._slow += slow
            lane.sock.send_multipart(frames)
            self.delivered += 1
            self.tally.sent[category] += 1
            self.tally.by_socket["read-only" if lane.readonly else "admin"] += 1
            if self._turn % 16 == 0:
                self._receive(0)
        while any(lane.in_flight for lane in self.lanes):
            self._receive(self.reply_timeout)

    def _receive(self, timeout: float) -> None:
        """Check every reply that arrives within ``timeout`` seconds (at least one if > 0)."""
        ready = dict(self.poller.poll(int(timeout * 1000)))
        if not ready and timeout:
            stuck = [s.describe() for lane in self.lanes for s in lane.by_id.values()]
            raise AssertionError(f"no reply within {timeout}s; waiting for {stuck[:5]}")
        for lane in self.lanes:
            if lane.sock not in ready:
                continue
            while True:
                try:
                    reply = lane.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._check(lane, reply)

    # -- checking -------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        if len(self.failures) < 50:
            self.failures.append(message)

    def _check(self, lane: Lane, reply: list[bytes]) -> None:
        if reply[0] == b"" and len(reply) > 1:
            delimited, payload, extra = True, reply[1], reply[2:]
        else:
            delimited, payload, extra = False, reply[0], reply[1:]
        try:
            answer = protocol.decode_reply(payload)
            body = json.loads(payload)
        except protocol.ProtocolError as exc:
            self._fail(f"reply not well-formed ({exc}): {reply[:3]!r}")
            return
        sent = lane.by_id.pop(answer.id, None) if answer.id is not None else None
        if answer.id is None and lane.anonymous:
            sent = lane.anonymous.popleft()
        if sent is None:
            self._fail(f"a reply nobody waits for: {payload[:300]!r}")
            return
        exp = sent.expect
        self._slow -= exp.command is not None and exp.command.slow
        what = sent.describe()
        outcome = "ok" if answer.ok else str(answer.error_code)
        self.tally.replies[outcome] += 1
        if exp.command is not None:
            key = f"{exp.command.name}: {outcome}"
            self.tally.handled[key] += 1
            samples = self.tally.samples.setdefault(key, [])
            if len(samples) < 5 and not answer.ok:
                samples.append(str(answer.error_message)[:200])
        if not answer.ok:
            self.tally.errors += 1
        if set(body) != {"v", "id", "ok", "result" if answer.ok else "error"} or body["v"] != 1:
            self._fail(f"reply keys {sorted(body)}: {payload[:200]!r} to {what}")
        if answer.id != exp.request_id or delimited != exp.delimited:
            self._fail(f"reply id {answer.id!r}, delimited {delimited} to {what}")
        if answer.error_code == protocol.INTERNAL:
            self.internal.append(f"{answer.error_message} <- {what}")
            return
        if not answer.ok and answer.error_code not in protocol.ERROR_CODES:
            self._fail(f"unknown error code {answer.error_code!r} to {what}")
        if exp.code is not None and outcome != exp.code:
            self._fail(f"{outcome} ({answer.error_message}), not {exp.code}, to {what}")
        infer_frames = answer.ok and exp.command is not None and exp.command.frames
        if extra and not (infer_frames and exp.frames_in):
            self._fail(f"{len(extra)} extra reply frames to {what}")
        if infer_frames and exp.frames_in:
            described = (answer.result or {}).get("arrays")
            if not isinstance(described, list) or len(described) != len(extra):
                self._fail(f"'arrays' {described!r} for {len(extra)} reply frames to {what}")
        if not (infer_frames and not exp.frames_in):  # JSON outputs may hold a model's NaN
            try:
                strict_json(payload)
            except ValueError as exc:
                self._fail(f"reply is not JSON ({exc}) to {what}")

    def one_by_one(self, messages: Iterable[tuple[str, list[bytes]]]) -> None:
        """Send each message alone and wait for its reply, for messages that perfd may read
        (a reply with their id) or not (``bad_request`` without an id) depending on its stack
        depth: ``expect`` cannot tell which, but the reply must be one of the two. They go to
        the admin socket, where every command reaches its handler."""
        assert not any(lane.in_flight for lane in self.lanes)
        admin = [lane for lane in self.lanes if not lane.readonly]
        for count, (category, frames) in enumerate(messages):
            lane = admin[count % len(admin)]
            exp = expect(frames, lane.readonly)
            if exp.request_id is None:  # perfd may have read it: a handler may answer
                body = json.loads(frames[-1][:400].split(b',"cmd"')[0] + b"}")
                exp = Expect(body["id"], exp.delimited, None)
            lane.by_id[exp.request_id] = sent = _Sent(category, frames, exp)
            self._slow += exp.command is not None and exp.command.slow
            lane.sock.send_multipart(frames)
            self.delivered += 1
            self.tally.sent[category] += 1
            self.tally.by_socket["read-only" if lane.readonly else "admin"] += 1
            assert lane.sock.poll(int(self.reply_timeout * 1000)), f"no reply: {sent.describe()}"
            reply = lane.sock.recv_multipart()
            answer = protocol.decode_reply(reply[-1])
            if answer.id is None and answer.error_code == protocol.BAD_REQUEST:  # not read
                self._slow -= exp.command is not None and exp.command.slow
                del lane.by_id[exp.request_id]
                unread = Expect(None, exp.delimited, protocol.BAD_REQUEST)
                lane.anonymous.append(_Sent(category, frames, unread))
            self._check(lane, reply)

    # -- probes ---------------------------------------------------------------------------

    def call(
        self, cmd: str, *, readonly: bool = True, timeout: float = 3.0, **args: Any
    ) -> protocol.Reply:
        """One request on a fresh REQ socket; its reply (AssertionError after ``timeout``)."""
        started = time.monotonic()
        with self.ctx.socket(zmq.REQ) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"ipc://{self.paths[readonly]}")
            sock.send(json_text({"v": 1, "id": f"probe-{cmd}", "cmd": cmd, "args": args}))
            assert sock.poll(int(timeout * 1000)), f"{cmd} got no reply within {timeout}s"
            answer = protocol.decode_reply(sock.recv())
        self.delivered += 1
        self.tally.errors += not answer.ok
        if cmd == "ping":
            assert answer.ok, answer
            self.pings.append(time.monotonic() - started)
        return answer

    def trimmed_rss(self, pid: int) -> int:
        """perfd's RSS once it has given freed heap back to the kernel: evicting a model runs
        gc and malloc_trim (perfd.cache.meter.release), so allocator slack does not count."""
        self.call("unpin", readonly=False, model="echo")  # not_found when not loaded
        assert self.call("load", readonly=False, timeout=30, model="echo").ok
        assert self.call("evict", readonly=False, timeout=30, model="echo").ok
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for {pid}")

    def oversize(self, readonly: bool, size: int, *, alone: bool) -> None:
        """Send a frame of ``size`` bytes, over the socket's limit: perfd drops the connection
        unanswered; the DEALER reconnects by itself and its next request is answered. The
        big frame is ``alone`` in its message, or follows a valid request."""
        ping = json_text({"v": 1, "id": "after-oversize", "cmd": "ping"})
        frames = [b"", b"[" * size] if alone else [b"", ping, b"\0" * size]
        with self.ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 10)
            monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            try:
                sock.connect(f"ipc://{self.paths[readonly]}")
                _wait_event(monitor, zmq.EVENT_CONNECTED)
                sock.send_multipart(frames, copy=False)
                _wait_event(monitor, zmq.EVENT_DISCONNECTED)
                _wait_event(monitor, zmq.EVENT_CONNECTED)
                sock.send_multipart([b"", ping])
                assert sock.poll(3000), "no reply after reconnecting"
                assert protocol.decode_reply(sock.recv_multipart()[1]).ok
            finally:
                sock.disable_monitor()
                monitor.close(0)
        self.delivered += 1  # the ping; the oversize message never reaches perfd's loop
        self.tally.sent["oversize"] += 1
        self.tally.by_socket["read-only" if readonly else "admin"] += 1


def _wait_event(monitor: zmq.Socket[bytes], event: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no socket event {event}"
        assert monitor.poll(int(left * 1000)), f"no socket event {event}"
        if recv_monitor_message(monitor)["event"] == event:
            return
