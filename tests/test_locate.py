"""How the real perfctl finds perfd and what it refuses to talk to: a stranger's /tmp/perfd-UID
(nothing is sent), every place perfd may live, wrong and stale sockets named at once."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

import perfctl.__main__ as cli
from perfd import daemon

# Imported before a fork drops root: the child cannot read the interpreter's files when they
# live under a home only root may enter, and a perfd imports these as it starts.
from perfd.cache import core, housekeeping, meter  # noqa: F401
from perfd.loaders import openai, registry  # noqa: F401
from perfd.net import provider  # noqa: F401
from perfd.probes import host, nvml  # noqa: F401
from tests.conftest import StartPerfd, clean_env, command

NOBODY = 65534
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as other uids needs root (CI runs as root)"
)


def _child(uid: int, env: dict[str, str], run: Callable[[], int], out: int, err: int) -> int:
    """Fork; the child drops to ``uid`` (no groups), takes ``env`` and exits with run()'s code.

    A fork, not an exec: the interpreter may live under a directory ``uid`` cannot read, so
    everything the child needs is imported before the privileges are dropped.
    """
    pid = os.fork()
    if pid:
        return pid
    code = 99
    try:
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        os.umask(0o022)
        os.environ.clear()
        os.environ.update(env)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        code = run()
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@pytest.fixture
def victim() -> Iterator[int]:
    """A uid of no account, for a user whose perfd lives in the predictable /tmp/perfd-UID."""
    uid = 50000 + os.getpid() % 10000
    shutil.rmtree(f"/tmp/perfd-{uid}", ignore_errors=True)
    yield uid
    shutil.rmtree(f"/tmp/perfd-{uid}", ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    """perfctl's environment as under `su -`: no XDG_RUNTIME_DIR unless given."""
    base = {k: v for k, v in clean_env().items() if k != "XDG_RUNTIME_DIR"}
    return {**base, **extra}


def ctl_as(uid: int, *argv: str, **env: str) -> tuple[int, str, str]:
    """perfctl's real main() run as ``uid``: (exit code, stdout, stderr)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = _child(uid, _env(**env), lambda: cli.main(list(argv)), out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    with open(out_r) as out, open(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr


class Stranger:
    """Another user's fake perfd, run as nobody: it makes ``directory`` with ``mode`` (None:
    it exists), binds a ROUTER on the socket ``name`` in it, and counts what reaches it."""

    def __init__(self, directory: str, mode: int | None, name: str = "perfd.sock") -> None:
        self._stop_r, self._stop_w = os.pipe()
        report_r, report_w = os.pipe()
        self._report = report_r

        def listen() -> int:
            os.close(self._stop_w)  # or the stop pipe never reaches EOF
            if mode is not None:
                os.mkdir(directory)
                os.chmod(directory, mode)
            ctx = zmq.Context()
            router = ctx.socket(zmq.ROUTER)
            monitor = router.get_monitor_socket(zmq.EVENT_ACCEPTED)
            router.bind(f"ipc://{os.path.join(directory, name)}")
            os.write(report_w, b"ready\n")
            poller = zmq.Poller()
            for sock in (router, monitor, self._stop_r):
                poller.register(sock, zmq.POLLIN)
            accepted = messages = 0
            while True:
                events = dict(poller.poll())
                if router in events:
                    router.recv_multipart()
                    messages += 1
                if monitor in events:
                    monitor.recv_multipart()
                    accepted += 1
                if self._stop_r in events:
                    os.write(report_w, f"{accepted} {messages}\n".encode())
                    return 0

        self.pid = _child(NOBODY, {}, listen, os.open(os.devnull, os.O_WRONLY), 2)
        os.close(report_w)
        self._lines = open(report_r)  # noqa: SIM115
        assert self._lines.readline() == "ready\n"

    def heard(self) -> tuple[int, int]:
        """Stop it; (connections accepted, messages received)."""
        os.close(self._stop_w)
        accepted, messages = self._lines.readline().split()
        self._lines.close()
        os.waitpid(self.pid, 0)
        return int(accepted), int(messages)


@as_root
@pytest.mark.parametrize(
    ("mode", "why"),
    [("755", "belongs to nobody (uid 65534), not to you or root"), ("777", "(mode 0777)")],
)
def test_a_strangers_tmp_dir_gets_nothing(victim: int, mode: str, why: str) -> None:
    """Another user pre-creates /tmp/perfd-UID and listens there: the victim's perfctl (no
    XDG_RUNTIME_DIR) refuses with exit 3 and the stranger sees no connection, no message."""
    stranger = Stranger(f"/tmp/perfd-{victim}", int(mode, 8))
    try:
        infer = ctl_as(victim, "infer", "embedder", "--input", '"my secret prompt"')
        status = ctl_as(victim, "status", "--json")
    finally:
        heard = stranger.heard()
    assert heard == (0, 0)
    for code, _, err in (infer, status):
        assert code == 3, err
        assert f"runtime directory /tmp/perfd-{victim}" in err
        assert why in err
        assert "hint: remove it" in err
    assert json.loads(status[1])["error"]["code"] == "not_running"


@as_root
def test_a_strangers_socket_in_a_shared_dir_gets_nothing(short_dir: Path) -> None:
    """--socket naming a socket another user bound in a sticky world-writable directory is
    refused before any connection."""
    shared = short_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    stranger = Stranger(str(shared), None, "fake.sock")
    try:
        out = subprocess.run(
            [*command("perfctl"), "--socket", str(shared / "fake.sock"), "ping"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        heard = stranger.heard()
    assert heard == (0, 0)
    assert out.returncode == 3
    assert "belongs to nobody (uid 65534), not to you, root or the owner of" in out.stderr


@as_root
def test_a_perfd_started_without_xdg_is_found_from_a_login_shell(
    victim: int, short_dir: Path
) -> None:
    """perfd run under `su -` lives in /tmp/perfd-UID; perfctl from a shell with
    XDG_RUNTIME_DIR finds it there, and `status` shows whose perfd answered and where.
    With no perfd, perfctl lists every place it looked and how to point it elsewhere."""
    config = short_dir / "perfd.toml"
    config.write_text("")
    config.chmod(0o644)
    xdg = str(short_dir / "xdg")

    def serve() -> int:
        return daemon.main(["--config", str(config)])

    log = os.open(short_dir / "perfd.log", os.O_WRONLY | os.O_CREAT, 0o600)
    perfd = _child(victim, _env(), serve, log, log)
    os.close(log)
    try:
        deadline = time.monotonic() + 30
        while ctl_as(victim, "ping", XDG_RUNTIME_DIR=xdg)[0] != 0:
            assert os.waitpid(perfd, os.WNOHANG) == (0, 0), (short_dir / "perfd.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        code, out, err = ctl_as(victim, "status", XDG_RUNTIME_DIR=xdg)
        assert code == 0, err
        assert f"pid {perfd} · user {victim} ·" in out
        assert f"socket       /tmp/perfd-{victim}/perfd.sock" in out
        mode = os.stat(f"/tmp/perfd-{victim}").st_mode
        assert stat.S_IMODE(mode) == 0o755
    finally:
        os.kill(perfd, signal.SIGTERM)
        _, status = os.waitpid(perfd, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    code, _, err = ctl_as(victim, "ping", XDG_RUNTIME_DIR=xdg)
    assert code == 3
    assert (
        f"no socket in {xdg}/perfd ($XDG_RUNTIME_DIR/perfd), /tmp/perfd-{victim} "
        "(without XDG_RUNTIME_DIR) or /run/perfd (the system service); "
        "$PERFD_RUNTIME_DIR is not set"
    ) in err
    assert "PERFD_RUNTIME_DIR=DIR perfctl ..., or perfctl --socket PATH" in err


def _timed(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = subprocess.run(
        [*command("perfctl"), "--timeout", "5", *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out, time.monotonic() - started


def test_wrong_sockets_are_named_at_once(start_perfd: StartPerfd, short_dir: Path) -> None:
    """A directory, a file that is not a socket, and the socket of a SIGKILLed perfd each get
    their own message and exit 3 at once, not after the 5 s timeout and its retry."""
    plain = short_dir / "plain"
    plain.write_text("")
    perfd = start_perfd()
    perfd.stop(signal.SIGKILL)
    cases = [
        (short_dir, f"{short_dir} is a directory, not a socket; perfd's would be "),
        (plain, f"{plain} is not a socket but a regular file"),
        (
            perfd.admin_socket,
            f"{perfd.admin_socket} is a stale socket, left by perfd pid {perfd.proc.pid} when "
            "it was killed (nothing listens on it and its lock is not held)",
        ),
    ]
    for path, message in cases:
        out, elapsed = _timed("--socket", str(path), "ping", "--json")
        assert out.returncode == 3, out.stderr
        assert message in out.stderr
        assert json.loads(out.stdout)["error"]["code"] == "not_running"
        assert elapsed < 4, elapsed  # perfctl's own start-up included; a wait would be 10 s
    stale, _ = _timed("ping", "--json")  # found through the runtime directory, too
    assert stale.returncode == 3
    stale = subprocess.run(
        [*command("perfctl"), "ping"],
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert stale.returncode == 3
    assert "is a stale socket" in stale.stderr
    assert "start perfd again (it removes stale sockets)" in stale.stderr
