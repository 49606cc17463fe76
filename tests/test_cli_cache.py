"""The model cache from the command line: the real perfctl against a real perfd with toy models,
and the Python client's cache methods (arrays both ways, no retry of what is not idempotent)."""

from __future__ import annotations

import grp
import json
import re
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import zmq

import perfctl
from perfctl import client as perfctl_client
from perfctl.format import base
from tests.conftest import Perfd, StartPerfd, clean_env, command

ROOT = str(Path(__file__).resolve().parent.parent)
MODELS = """
[monitor]
interval = "200ms"
[models.echo]
target = "tests.models.toy:make_echo"
[models.doubler]
target = "tests.models.toy:make_doubler"
[models.ballast]
target = "tests.models.toy:make_ballast"
options = { size_mb = 64 }
[models.broken]
target = "tests.models.toy:make_failing"
[models.upper]
target = "tests.models.toy:make_upper"
pin = true
preload = true
[models.huge]
target = "tests.models.toy:make_echo"
size_hint = "1TiB"
"""
CLOCK = re.compile(r"^\d\d:\d\d:\d\d UTC$")


def start(start_perfd: StartPerfd) -> Perfd:
    """A perfd whose python loader can import tests.models.toy."""
    return start_perfd(MODELS, env={"PYTHONPATH": ROOT})


def ok(perfd: Perfd, *args: str) -> str:
    """Run perfctl; it must exit 0. Its stdout."""
    out = perfd.ctl(*args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def row(text: str, name: str) -> list[str]:
    """The ps row of model ``name``, split into its columns (two spaces or more apart)."""
    (found,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return re.split(r"\s{2,}", found.strip())


def test_infer_prints_the_outputs_as_json(start_perfd: StartPerfd) -> None:
    """`perfctl infer echo --input '{"a":1}'` prints {"a": 1}; --json adds model and schema."""
    perfd = start(start_perfd)
    assert ok(perfd, "infer", "echo", "--input", '{"a":1}') == '{"a": 1}\n'
    data = json.loads(ok(perfd, "infer", "echo", "--input", "[1, 2]", "--json"))
    assert data == {"schema": 1, "model": "echo", "outputs": [1, 2]}


def test_infer_input_from_a_file_and_stdin(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """--input @FILE reads the JSON from a file, --input - from stdin."""
    perfd = start(start_perfd)
    inputs = tmp_path / "inputs.json"
    inputs.write_text('{"rows": [[1, 2], [3, 4]]}\n')
    assert json.loads(ok(perfd, "infer", "echo", "--input", f"@{inputs}")) == {
        "rows": [[1, 2], [3, 4]]
    }
    out = subprocess.run(
        [*command("perfctl"), "infer", "echo", "--input", "-"],
        input='"from stdin"',
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert (out.returncode, out.stdout) == (0, '"from stdin"\n'), out.stderr


def test_infer_options_and_bad_input(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """--option KEY=VALUE reaches the model; unreadable or invalid --input is a usage error."""
    perfd = start(start_perfd)
    assert ok(perfd, "infer", "upper", "--input", '"abc"', "--option", "suffix=!") == '"ABC!"\n'
    for bad in ("{nope", f"@{tmp_path / 'missing.json'}"):
        out = perfd.ctl("infer", "echo", "--input", bad)
        assert out.returncode == 2, out.stderr
        assert "argument --input" in out.stderr


def test_load_then_ps_shows_the_measured_size(start_perfd: StartPerfd) -> None:
    """`perfctl load ballast` then `perfctl ps`: a ready row with its measured RSS and expiry;
    the configured models not loaded are listed after the table."""
    perfd = start(start_perfd)
    ok(perfd, "load", "upper")  # let the preload finish: an overlapping load is not measured
    loaded = ok(perfd, "load", "ballast")
    assert loaded.startswith("loaded ballast on cpu in ")
    text = ok(perfd, "ps")
    assert text.splitlines()[0].split() == [
        "NAME",
        "STATE",
        "ESTIMATE",
        "TENSORS",
        "MEASURED",
        "ERR%",
        "DEVICE",
        "UNTIL",
    ]
    reply = json.loads(ok(perfd, "ps", "--json"))
    (ballast,) = [m for m in reply["models"] if m["name"] == "ballast"]
    assert ballast["measured_bytes"] >= 48 << 20
    assert (ballast["tensor_bytes"], ballast["bytes_source"]) == (None, "measured")
    name, state, estimate, tensors, measured, error, device, until = row(text, "ballast")
    assert (name, state, device) == ("ballast", "ready", "cpu")
    assert (estimate, tensors, error) == ("-", "-", "-")  # a bytearray: no tensors to count
    assert measured == base.size(ballast["measured_bytes"])  # RSS: cpu's own figure
    assert CLOCK.match(until), until
    (cpu,) = reply["runtime"]
    own = row(text, "perfd")
    assert own == [
        "perfd",
        "runtime",
        "-",
        "-",
        base.size(cpu["runtime_overhead_bytes"]),
        "-",
        "cpu",
        "-",
    ]
    assert row(text, "upper")[-1] == "PINNED"  # preloaded and pinned by the config
    assert text.splitlines()[-1] == "not loaded: broken, doubler, echo, huge"


def test_ps_json(start_perfd: StartPerfd) -> None:
    """`perfctl ps --json` is the result plus schema 1: the models and the configured names."""
    perfd = start(start_perfd)
    ok(perfd, "load", "upper")  # joins the preload (single flight), which may still be running
    data = json.loads(ok(perfd, "ps", "--json"))
    assert data["schema"] == 1
    assert data["configured"] == ["ballast", "broken", "doubler", "echo", "huge", "upper"]
    (upper,) = data["models"]
    assert (upper["name"], upper["state"], upper["pinned"]) == ("upper", "ready", True)
    assert upper["expires_at"] is None


def test_evict_a_model_and_dry_run_all(start_perfd: StartPerfd) -> None:
    """`evict NAME` unloads it and says what it freed; `evict --all --dry-run` only lists;
    --all and --idle name the pinned model they skipped."""
    perfd = start(start_perfd)
    ok(perfd, "load", "upper")  # pinned by the config
    ok(perfd, "load", "ballast")
    assert ok(perfd, "evict", "ballast").startswith("evicted ballast from cpu · ")
    assert "ballast " not in ok(perfd, "ps")
    ok(perfd, "load", "echo")
    assert ok(perfd, "evict", "--all", "--dry-run") == (
        "would evict: echo\nskipped: upper (pinned)\n"
    )
    assert row(ok(perfd, "ps"), "echo")[1] == "ready"  # still loaded
    assert ok(perfd, "evict", "--idle") == "nothing to evict\nskipped: upper (pinned)\n"
    data = json.loads(ok(perfd, "evict", "--all", "--json"))
    assert data["evicted"] == ["echo"]
    assert data["skipped"] == [{"model": "upper", "why": "pinned"}]


def test_pin_and_unpin(start_perfd: StartPerfd) -> None:
    """pin keeps a model (PINNED in ps, evict refused); unpin gives it an expiry again."""
    perfd = start(start_perfd)
    ok(perfd, "load", "echo")
    assert ok(perfd, "pin", "echo") == "pinned echo · stays loaded until unpinned\n"
    assert row(ok(perfd, "ps"), "echo")[-1] == "PINNED"
    refused = perfd.ctl("evict", "echo")
    assert refused.returncode == 1
    assert "pinned" in refused.stderr
    unpinned = ok(perfd, "unpin", "echo")
    assert unpinned.startswith("unpinned echo · until ")
    assert CLOCK.match(row(ok(perfd, "ps"), "echo")[-1])
    ok(perfd, "evict", "echo")


def test_unknown_model_exits_1_with_not_found(start_perfd: StartPerfd) -> None:
    """`perfctl infer nope`: exit 1, the names perfd knows, and not_found in --json."""
    perfd = start(start_perfd)
    out = perfd.ctl("infer", "nope", "--input", "1")
    assert out.returncode == 1
    assert "unknown model 'nope'" in out.stderr
    data = json.loads(perfd.ctl("infer", "nope", "--input", "1", "--json").stdout)
    assert data["error"]["code"] == "not_found"


def test_no_capacity_exits_1_with_the_hint(start_perfd: StartPerfd) -> None:
    """`perfctl load huge` (size_hint 1TiB): exit 1, the numbers, and what to do about it."""
    perfd = start(start_perfd)
    out = perfd.ctl("load", "huge")
    assert out.returncode == 1
    message, hint = out.stderr.splitlines()
    assert message.startswith("perfctl: 'huge' needs 1024.00 GiB on cpu")
    assert message.endswith("; raise [cache] budgets, unpin or evict models")
    assert hint == (  # adds where to look and which keys, not the message again
        "  hint: perfctl ps shows each model's size and whether it is pinned or in use; the "
        "budgets are [cache] ram_budget and gpu_budget (perfctl reload applies a change)"
    )
    data = json.loads(perfd.ctl("load", "huge", "--json").stdout)
    assert data["error"]["code"] == "no_capacity"


def test_load_failed_exits_1_with_the_hint(start_perfd: StartPerfd) -> None:
    """A model whose factory raises: exit 1, the loader's error, and where to look."""
    perfd = start(start_perfd)
    out = perfd.ctl("load", "broken")
    assert out.returncode == 1
    assert "toy model refuses to load" in out.stderr
    assert "hint: check the model's target/path and perfd's log (journalctl -u perfd)" in (
        out.stderr
    )


def test_load_a_model_named_at_run_time(start_perfd: StartPerfd) -> None:
    """`load NAME --target ... --option ... --size-hint`: the spec reaches the loader."""
    perfd = start(start_perfd)
    out = ok(
        perfd,
        "load",
        "rt",
        "--target",
        "tests.models.toy:make_ballast",
        "--option",
        "size_mb=8",
        "--size-hint",
        "16MiB",
    )
    assert " · 16.0 MiB / " in out
    assert json.loads(ok(perfd, "infer", "rt", "--input", "1")) == {"size_mb": 8, "inputs": 1}
    bad = perfd.ctl("load", "rt2", "--size-hint", "lots")
    assert bad.returncode == 2
    assert "--size-hint" in bad.stderr


def test_read_only_socket_exits_4(start_perfd: StartPerfd) -> None:
    """infer through the read-only socket is forbidden: exit 4 with the group hint."""
    perfd = start(start_perfd)
    out = perfd.ctl("--socket", str(perfd.readonly_socket), "infer", "echo", "--input", "1")
    assert out.returncode == 4
    assert "needs the admin socket" in out.stderr
    group = grp.getgrgid(perfd.admin_socket.stat().st_gid).gr_name
    assert f"hint: admin commands go to {perfd.admin_socket}; perfd.sock belongs to group " in (
        out.stderr
    )
    assert f"usermod -aG {group} $USER" in out.stderr
    assert ok(perfd, "--socket", str(perfd.readonly_socket), "ps").startswith("NAME ")


def test_evict_needs_exactly_one_target(short_dir: Path) -> None:
    """`perfctl evict` without NAME, --all or --idle, or with two of them, is a usage error."""
    for args in ((), ("echo", "--all"), ("--all", "--idle"), ("--dry-run",)):
        out = subprocess.run(
            [*command("perfctl"), "evict", *args],
            env=clean_env(PERFD_RUNTIME_DIR=str(short_dir)),
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 2, (args, out.stderr)
        assert "exactly one of NAME, --all or --idle" in out.stderr


def test_stats_shows_the_cache(start_perfd: StartPerfd) -> None:
    """`perfctl stats` has the cache lines before perfd's own, within 80 columns."""
    perfd = start(start_perfd)
    ok(perfd, "infer", "echo", "--input", "1")
    lines = ok(perfd, "stats").splitlines()
    (cache,) = [line for line in lines if line.startswith("cache ")]
    assert cache.startswith("cache  2 loaded · hits ")
    assert any(line.startswith("       evictions lru 0 ") for line in lines)
    overhead = json.loads(ok(perfd, "stats", "--json"))["cache"]["devices"]["cpu"]
    tail = f" budget · runtime {base.size(overhead['runtime_overhead_bytes'])}"
    assert any(line.startswith("       cpu  ") and line.endswith(tail) for line in lines)
    assert lines[-1].startswith("perfd  rss ")
    assert max(map(len, lines)) <= base.WIDTH


def test_client_infer_numpy_both_ways(start_perfd: StartPerfd) -> None:
    """Client.infer with numpy arrays sends and gets raw frames: numpy arrays come back (a
    strided one too); with a list, nested lists come back."""
    perfd = start(start_perfd)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with perfctl.Client(runtime_dir=perfd.runtime_dir) as client:
        doubled = client.infer("doubler", x)
        assert isinstance(doubled, np.ndarray)
        assert doubled.dtype == np.float32
        assert doubled.tolist() == [[0, 2, 4], [6, 8, 10]]
        assert doubled.flags.writeable
        assert client.infer("doubler", [[1.0, 2.0]]) == [[2.0, 4.0]]
        echoed = client.infer("echo", {"a": x[:, ::2], "b": ("text", x.astype(">i8"))})
        assert echoed["a"].tolist() == [[0, 2], [3, 5]]
        assert echoed["b"][0] == "text"
        assert echoed["b"][1].dtype == np.dtype(">i8")
        assert echoed["b"][1].tolist() == x.tolist()
        assert client.infer("echo", {"plain": [1]}) == {"plain": [1]}


def test_client_cache_methods(start_perfd: StartPerfd) -> None:
    """ps, load, pin, unpin and evict are methods; NoCapacity and LoadFailed are typed."""
    perfd = start(start_perfd)
    with perfctl.Client(runtime_dir=perfd.runtime_dir) as client:
        assert client.load("echo")["state"] == "ready"
        assert client.pin("echo")["pinned"] is True
        assert client.unpin("echo")["pinned"] is False
        assert client.evict(all=True, dry_run=True)["evicted"] == ["echo"]
        assert client.evict("echo")["evicted"] == ["echo"]
        assert [m["name"] for m in client.ps()["models"]] == ["upper"]
        with pytest.raises(perfctl.NoCapacity) as full:
            client.load("huge")
        assert full.value.code == "no_capacity"
        with pytest.raises(perfctl.LoadFailed, match="refuses to load"):
            client.load("broken")
        assert client.load("rt", target="tests.models.toy:make_upper")["name"] == "rt"


def test_long_commands_wait_longer() -> None:
    """load, infer and evict wait max(timeout, long_timeout); the others wait timeout."""
    client = perfctl.Client("/nonexistent.sock")
    assert client.timeout_for("ps") == perfctl_client.DEFAULT_TIMEOUT == 3.0
    assert client.timeout_for("infer") == client.timeout_for("load") == 300.0
    assert perfctl.Client("/x", timeout=1, long_timeout=1).timeout_for("load") == 1
    assert perfctl.Client("/x", timeout=900).timeout_for("infer") == 900


@pytest.mark.slow
@pytest.mark.parametrize(("cmd", "args", "sent"), [("infer", {"model": "m"}, 1), ("ps", {}, 2)])
def test_only_retryable_commands_are_sent_again(
    short_dir: Path, cmd: str, args: dict[str, str], sent: int
) -> None:
    """A silent perfd: infer is sent once and never again (it may still be running); the
    read-only ps is retried once on a fresh socket."""
    path = short_dir / "perfd.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    seen: list[bytes] = []

    def swallow() -> None:
        while router.poll(1000):
            seen.append(router.recv_multipart()[-1])

    thread = threading.Thread(target=swallow)
    thread.start()
    try:
        with (
            perfctl.Client(path, timeout=0.2, long_timeout=0.2) as client,
            pytest.raises(perfctl.DaemonTimeout) as caught,
        ):
            client.call(cmd, **args)
    finally:
        thread.join(10)
        router.close(0)
        ctx.term()
    assert len(seen) == sent
    assert ("is not retried" in str(caught.value)) == (sent == 1)
