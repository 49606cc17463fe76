"""The real perfd executable, driven by the real perfctl and by a socket playing systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from tests.conftest import StartPerfd, clean_env, command

BAD_CONFIG = "[server]\nworkers = 0\n"


def test_version_flag() -> None:
    """`perfd --version` and `python -m perfd --version` print the package version."""
    from perfd import __version__

    for argv in (command("perfd"), [sys.executable, "-m", "perfd"]):
        out = subprocess.run([*argv, "--version"], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == f"perfd {__version__}"


def test_check_config_good_and_bad(tmp_path: Path) -> None:
    """--check-config exits 0 for a valid file and 1 with file, key, value and allowed values."""
    good = tmp_path / "good.toml"
    good.write_text('[log]\nlevel = "debug"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD_CONFIG)
    ok = subprocess.run([*command("perfd"), "--check-config", str(good)], capture_output=True)
    assert ok.returncode == 0
    fail = subprocess.run(
        [*command("perfd"), "--check-config", str(bad)], capture_output=True, text=True
    )
    assert fail.returncode == 1
    assert str(bad) in fail.stderr
    assert "server.workers" in fail.stderr
    assert "0" in fail.stderr
    assert "from 1 to 256" in fail.stderr


def test_check_config_uses_config_flag(tmp_path: Path) -> None:
    """--check-config without a path checks the --config file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("typo = 1\n")
    out = subprocess.run(
        [*command("perfd"), "--config", str(bad), "--check-config"], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert "typo" in out.stderr
    assert "unknown key" in out.stderr


def test_bad_config_refuses_to_start(tmp_path: Path, short_dir: Path) -> None:
    """perfd exits 1 at start with a bad config, naming the problem."""
    bad = tmp_path / "bad.toml"
    bad.write_text('[log]\nlevel = "loud"\n')
    out = subprocess.run(
        [*command("perfd"), "--config", str(bad), "--runtime-dir", str(short_dir / "r")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
    )
    assert out.returncode == 1
    assert "log.level" in out.stderr
    assert '"loud"' in out.stderr


@pytest.mark.smoke
def test_ping_status_config_through_perfctl(start_perfd: StartPerfd) -> None:
    """perfctl talks to a real perfd: ping, status, config, reload, human and JSON."""
    perfd = start_perfd('[log]\nlevel = "debug"\n')
    ping = perfd.ctl("ping")
    assert ping.returncode == 0, ping.stderr
    assert "pong from perfd" in ping.stdout
    status = perfd.ctl("status", "--json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert data["schema"] == 1
    assert data["pid"] == perfd.proc.pid
    assert data["config_path"] == str(perfd.config_path)
    assert data["components"]["server"] == "started"
    assert data["uptime_s"] >= 0
    human = perfd.ctl("status")
    assert f"pid {perfd.proc.pid}" in human.stdout
    assert "\033[" not in human.stdout  # not a TTY: no colour
    config = perfd.ctl("--json", "config")
    assert json.loads(config.stdout)["config"]["log"]["level"] == "debug"
    assert 'level = "debug"' in perfd.ctl("config").stdout
    reload = perfd.ctl("reload", "--json")
    assert reload.returncode == 0, reload.stderr
    assert json.loads(reload.stdout)["reloaded"] is True


def test_python_m_perfctl(start_perfd: StartPerfd) -> None:
    """`python -m perfctl` works like the console script."""
    perfd = start_perfd()
    out = subprocess.run(
        [sys.executable, "-m", "perfctl", "ping"],
        env=clean_env(PERFD_RUNTIME_DIR=str(perfd.runtime_dir)),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr


def test_systemd_notify_sequence(start_perfd: StartPerfd) -> None:
    """READY, STATUS, WATCHDOG, RELOADING (with MONOTONIC_USEC), READY, STOPPING arrive in order."""
    perfd = start_perfd(env={"WATCHDOG_USEC": "200000"})
    ready = perfd.notify.messages[-1]
    assert ready.startswith("READY=1")
    assert "\nSTATUS=mem " in ready  # the first sample came before READY
    perfd.notify.wait_for("WATCHDOG=1")
    perfd.notify.wait_for("WATCHDOG=1")
    perfd.proc.send_signal(signal.SIGHUP)
    reloading = perfd.notify.wait_for("RELOADING=1")
    usec = int(reloading.split("MONOTONIC_USEC=")[1])
    assert 0 < usec <= __import__("time").clock_gettime_ns(__import__("time").CLOCK_MONOTONIC)
    perfd.notify.wait_for("READY=1")
    perfd.proc.send_signal(signal.SIGTERM)
    perfd.notify.wait_for("STOPPING=1")
    assert perfd.proc.wait(15) == 0
    kinds = [m.split("=")[0] for m in perfd.notify.messages]
    first = {k: kinds.index(k) for k in ("READY", "WATCHDOG", "RELOADING", "STOPPING")}
    assert first["READY"] < first["WATCHDOG"] < first["RELOADING"] < first["STOPPING"]
    assert kinds.index("READY", first["RELOADING"]) < first["STOPPING"]


def test_sighup_good_config_applies(start_perfd: StartPerfd) -> None:
    """SIGHUP with a changed valid config applies it and logs config.reloaded with the keys."""
    perfd = start_perfd()
    perfd.config_path.write_text('[log]\nlevel = "debug"\n[server]\ncommand_timeout = "5s"\n')
    perfd.proc.send_signal(signal.SIGHUP)
    perfd.notify.wait_for("RELOADING=1")
    perfd.notify.wait_for("READY=1")
    entry = perfd.log_entry("config.reloaded")
    assert entry["changed"] == ["log.level", "server.command_timeout"]
    config = json.loads(perfd.ctl("config", "--json").stdout)["config"]
    assert config["server"]["command_timeout"] == 5.0


def test_sighup_bad_config_keeps_old(start_perfd: StartPerfd) -> None:
    """SIGHUP with a bad config logs config.invalid at error level and keeps serving the old one."""
    perfd = start_perfd("[server]\nworkers = 3\n")
    perfd.config_path.write_text(BAD_CONFIG)
    perfd.proc.send_signal(signal.SIGHUP)
    perfd.notify.wait_for("READY=1")
    entry = perfd.log_entry("config.invalid")
    assert entry["level"] == "error"
    assert entry["key"] == "server.workers"
    assert entry["value"] == 0
    assert entry["path"] == str(perfd.config_path)
    config = json.loads(perfd.ctl("config", "--json").stdout)["config"]
    assert config["server"]["workers"] == 3
    reload = perfd.ctl("reload")
    assert reload.returncode == 1
    assert "server.workers" in reload.stderr
    assert perfd.ctl("ping").returncode == 0


def test_restart_only_keys_are_reported(start_perfd: StartPerfd) -> None:
    """A reload that changes a start-only key says a restart is needed."""
    perfd = start_perfd()
    perfd.config_path.write_text("[server]\nworkers = 2\n")
    out = json.loads(perfd.ctl("reload", "--json").stdout)
    assert out["restart_required"] == ["server.workers"]
    assert perfd.log_entry("config.restart_required")["keys"] == ["server.workers"]


@pytest.mark.smoke
def test_sigterm_cleans_up(start_perfd: StartPerfd) -> None:
    """SIGTERM and SIGINT exit 0 and leave no socket or lock file behind."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        perfd = start_perfd()
        assert perfd.admin_socket.exists()
        assert perfd.stop(sig) == 0
        assert sorted(os.listdir(perfd.runtime_dir)) == []
        assert perfd.events()[-2:] == ["daemon.stopping", "daemon.stopped"]


def test_socket_and_directory_modes(start_perfd: StartPerfd) -> None:
    """Runtime dir 0755, admin socket 0660, read-only socket 0666."""
    perfd = start_perfd()
    assert stat.S_IMODE(perfd.runtime_dir.stat().st_mode) == 0o755
    assert stat.S_IMODE(perfd.admin_socket.stat().st_mode) == 0o660
    assert stat.S_IMODE(perfd.readonly_socket.stat().st_mode) == 0o666
    assert perfd.admin_socket.is_socket()


def test_missing_group_falls_back_with_warning(start_perfd: StartPerfd) -> None:
    """A configured group that does not exist: the user's own group, and a warning."""
    perfd = start_perfd('[server]\ngroup = "no-such-group-perfd"\n')
    entry = perfd.log_entry("access.group_missing")
    assert entry["level"] == "warning"
    assert perfd.admin_socket.stat().st_gid == os.getegid()


def test_second_perfd_refuses(start_perfd: StartPerfd) -> None:
    """A second perfd on the same runtime dir exits 1 and the first keeps serving."""
    first = start_perfd()
    second = start_perfd(runtime_dir=first.runtime_dir, wait_ready=False)
    assert second.proc.wait(20) == 1
    assert "another perfd" in second.log_path.read_text()
    assert first.ctl("ping").returncode == 0


def test_second_perfd_refuses_when_socket_answers(start_perfd: StartPerfd, short_dir: Path) -> None:
    """Even without the lock, perfd will not steal an ipc endpoint something answers on."""
    rundir = short_dir / "steal"
    rundir.mkdir()
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{rundir / 'perfd.sock'}")
    try:
        perfd = start_perfd(runtime_dir=rundir, wait_ready=False)
        # Answer perfd's probe the way a live daemon would.
        assert router.poll(20000)
        frames = router.recv_multipart()
        router.send_multipart([*frames[:-1], b'{"v":1,"id":"probe","ok":true,"result":{}}'])
        assert perfd.proc.wait(20) == 1
        assert "already answers" in perfd.log_path.read_text()
    finally:
        router.close(0)
        ctx.term()


def test_stale_socket_is_removed(start_perfd: StartPerfd, short_dir: Path) -> None:
    """Socket files left by a killed perfd are removed and perfd starts."""
    first = start_perfd()
    first.stop(signal.SIGKILL)
    assert first.admin_socket.exists()
    second = start_perfd(runtime_dir=first.runtime_dir)
    assert second.ctl("ping").returncode == 0
    assert "socket.stale_removed" in second.events()


def test_readonly_socket_forbids_admin_commands(start_perfd: StartPerfd) -> None:
    """On perfd-ro.sock read-only commands work and reload is forbidden."""
    perfd = start_perfd()
    ro = str(perfd.readonly_socket)
    assert perfd.ctl("--socket", ro, "status").returncode == 0
    out = perfd.ctl("--socket", ro, "reload")
    assert out.returncode == 4
    assert "admin socket" in out.stderr


def test_perfctl_exit_codes_without_daemon(short_dir: Path) -> None:
    """No daemon: exit 3 with a hint; a dead socket file: exit 3 at once, named stale."""
    env = clean_env(PERFD_RUNTIME_DIR=str(short_dir))
    out = subprocess.run([*command("perfctl"), "status"], env=env, capture_output=True, text=True)
    assert out.returncode == 3
    assert "systemctl status perfd" in out.stderr
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(short_dir / "perfd.sock"))
    dead.close()
    out = subprocess.run(
        [*command("perfctl"), "--timeout", "0.2", "ping", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3
    assert json.loads(out.stdout)["error"]["code"] == "not_running"
    assert "is a stale socket" in out.stderr


def test_perfctl_usage_errors() -> None:
    """Usage errors exit 2; --version prints the version."""
    bad = subprocess.run([*command("perfctl"), "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2
    bad_timeout = subprocess.run(
        [*command("perfctl"), "--timeout", "soon", "ping"], capture_output=True, text=True
    )
    assert bad_timeout.returncode == 2
    version = subprocess.run([*command("perfctl"), "--version"], capture_output=True, text=True)
    assert version.returncode == 0
    assert version.stdout.startswith("perfctl ")


def test_json_log_lines(start_perfd: StartPerfd) -> None:
    """Every stdout line is one JSON object with ts, level, event and logger first."""
    perfd = start_perfd()
    perfd.stop()
    lines = perfd.log_path.read_text().splitlines()
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert list(entry)[:4] == ["ts", "level", "event", "logger"]
        assert entry["ts"].endswith("Z")


def test_journald_priority_prefix(start_perfd: StartPerfd, tmp_path: Path) -> None:
    """With $JOURNAL_STREAM naming stdout, each line starts with its <N> syslog priority."""
    perfd = start_perfd(wait_ready=False)
    perfd.stop(signal.SIGKILL)
    log_path = tmp_path / "journal.log"
    log_path.touch()
    st = log_path.stat()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [
                *command("perfd"),
                "--config",
                str(perfd.config_path),
                "--runtime-dir",
                str(perfd.runtime_dir),
            ],
            env={**perfd.env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        perfd.notify.wait_for("READY=1")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = log_path.read_text().splitlines()
    info = [line for line in lines if '"daemon.started"' in line]
    assert info[0].startswith("<6>{")
    warnings = [line for line in lines if '"level": "warning"' in line]
    assert all(line.startswith("<4>{") for line in warnings)


def test_malformed_messages_over_real_socket(start_perfd: StartPerfd) -> None:
    """Each kind of malformed input gets a well-formed error and perfd keeps serving."""
    perfd = start_perfd()
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"ipc://{perfd.admin_socket}")
    cases: list[tuple[list[bytes], str]] = [
        ([b"", b"not json"], "bad_request"),
        ([b"", b"\xff\xfe"], "bad_request"),
        ([b"", b"[1, 2]"], "bad_request"),
        ([b"", b'{"v": 2, "id": "a", "cmd": "ping"}'], "unsupported_version"),
        ([b"", b'{"v": 1, "id": 7, "cmd": "ping"}'], "bad_request"),
        ([b"", b'{"v": 1, "id": "a", "cmd": "nope"}'], "unknown_command"),
        ([b"", b'{"v": 1, "id": "a", "cmd": "ping", "args": {"x": 1}}'], "invalid_args"),
        ([b"", b'{"v": 1, "id": "a", "cmd": "ping", "args": []}'], "bad_request"),
        ([b"", b"[" * 100000], "bad_request"),
        ([b"", b"{}", b"extra frame"], "bad_request"),
        ([b"", b""], "bad_request"),
    ]
    try:
        for frames, code in cases:
            dealer.send_multipart(frames)
            assert dealer.poll(5000), frames
            reply = dealer.recv_multipart()
            assert reply[0] == b""
            body = json.loads(reply[1])
            assert body["ok"] is False
            assert body["error"]["code"] == code, (frames, body)
        # Oversized: libzmq drops the connection; perfd must keep serving everyone else.
        dealer.send_multipart([b"", b"x" * (2 << 20)])
        assert perfd.ctl("ping").returncode == 0
    finally:
        dealer.close(0)
        ctx.term()
    assert perfd.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid (CI is root)")
def test_foreign_group_is_a_clear_startup_error(short_dir: Path) -> None:
    """A socket group perfd's user may not use gives a one-line StartupError, not a traceback."""
    from perfd.errors import StartupError
    from perfd.server import rundir

    path = short_dir / "perfd.sock"
    path.touch()
    os.chown(path, 65534, 65534)
    pid = os.fork()
    if pid == 0:  # child: become nobody, then try to hand the socket to root's group
        code = 3
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            rundir.set_modes(path, path, rundir.Group(0, "root", fallback=False))
            code = 4
        except StartupError as exc:
            code = 0 if "not a member" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
