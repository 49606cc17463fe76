"""The runtime directory seen by the real perfd: created 0755, an existing one never chmodded,
refused with a remedy when unsafe; the lock message; what a user's own perfd keeps quiet."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from perfd import systemd
from tests.conftest import StartPerfd, clean_env, command

NOBODY = 65534
as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a directory of another uid needs root to make (CI runs as root)"
)


def run_perfd(runtime_dir: Path, *args: str, umask: int = -1) -> subprocess.CompletedProcess[str]:
    """Run the real perfd that is expected to refuse to start."""
    return subprocess.run(
        [*command("perfd"), "--runtime-dir", str(runtime_dir), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
        umask=umask,
    )


def start_failed(out: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON daemon.start_failed line perfd logged on stdout."""
    for line in out.stdout.splitlines():
        entry = json.loads(line)
        if entry["event"] == "daemon.start_failed":
            return dict(entry)
    raise AssertionError(f"no daemon.start_failed in {out.stdout!r}")


def test_a_sticky_world_writable_dir_is_refused_and_left_as_it_was(short_dir: Path) -> None:
    """`perfd --runtime-dir` on a /tmp-like directory (1777) refuses, naming a subdirectory
    to use instead, and leaves the mode 1777 and the directory empty."""
    tmpish = short_dir / "tmp"
    tmpish.mkdir()
    tmpish.chmod(0o1777)
    out = run_perfd(tmpish)
    assert out.returncode == 1
    assert stat.S_IMODE(tmpish.stat().st_mode) == 0o1777
    assert list(tmpish.iterdir()) == []
    assert "is writable by others (mode 1777)" in out.stderr
    assert f"such as {tmpish / 'perfd'} (perfd creates it)" in out.stderr
    assert "writable by others" in str(start_failed(out)["error"])


def test_a_private_dir_stays_private(start_perfd: StartPerfd, short_dir: Path) -> None:
    """An existing 0700 directory of perfd's user is used as it is: still 0700 while perfd
    runs and after it stops, with a note that others cannot reach perfd-ro.sock."""
    home = short_dir / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    perfd = start_perfd(runtime_dir=home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert perfd.log_entry("runtime_dir.private")["mode"] == "0700"
    assert perfd.stop() == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


@pytest.mark.slow
def test_a_missing_dir_is_created_0755_whatever_the_umask(short_dir: Path) -> None:
    """perfd creates a missing directory (and its parents) 0755 even under umask 077, so every
    user reaches the read-only socket; the check stops it before it binds (a symlink, here)."""
    target = short_dir / "a" / "b"
    link = short_dir / "link"
    link.symlink_to(target)
    out = run_perfd(link, umask=0o077)
    assert out.returncode == 1
    assert f"runtime directory {link} is a symlink" in out.stderr
    assert not target.exists()  # a symlink is refused before anything is created
    proc = subprocess.Popen(
        [*command("perfd"), "--runtime-dir", str(target)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        umask=0o077,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if json.loads(line)["event"] == "daemon.started":
                break
        assert stat.S_IMODE(target.stat().st_mode) == 0o755
        assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


@as_root
def test_a_dir_of_another_user_is_refused_with_a_remedy(short_dir: Path) -> None:
    """A directory another user made (the predictable /tmp/perfd-UID) is refused, naming its
    owner and how to get rid of it; its mode and owner stay as they were."""
    theirs = short_dir / "perfd-1000"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    out = run_perfd(theirs)
    assert out.returncode == 1
    assert "belongs to nobody (uid 65534), not to perfd's user root (uid 0)" in out.stderr
    assert f"rm -r {theirs}" in out.stderr
    assert (theirs.stat().st_uid, stat.S_IMODE(theirs.stat().st_mode)) == (NOBODY, 0o755)


def test_the_lock_message_names_the_pid_or_the_service(start_perfd: StartPerfd) -> None:
    """A second perfd on a taken directory names the first one's pid and says `kill PID` when
    the first was run by hand, `systemctl --user stop` when a service manager started it."""
    for env, stop in (({}, "kill {pid}"), (_service_env(), "systemctl --user stop")):
        first = start_perfd(env=env)
        second = start_perfd(runtime_dir=first.runtime_dir, wait_ready=False)
        assert second.proc.wait(20) == 1
        error = second.log_entry("daemon.start_failed")["error"]
        assert f"another perfd (pid {first.proc.pid}) is running" in error
        assert f"stop it first ({stop.format(pid=first.proc.pid)}" in error
        if not env:
            assert "systemctl" not in error
        assert first.stop() == 0


def _service_env() -> dict[str, str]:
    """The environment a user service manager gives perfd (this test process plays it)."""
    return {"INVOCATION_ID": "0123456789abcdef", "MANAGERPID": str(os.getpid())}


def test_a_users_own_perfd_is_quiet_about_the_default_group(start_perfd: StartPerfd) -> None:
    """The default group `perfd` missing: no warning for a perfd run by hand, a warning for a
    service; a configured group that is missing warns either way."""
    has_group = True
    try:
        grp.getgrnam("perfd")
    except KeyError:
        has_group = False
    by_hand = start_perfd()
    assert by_hand.ctl("ping").returncode == 0  # after daemon.started
    assert "access.group_missing" not in by_hand.events()
    own = grp.getgrgid(os.getegid()).gr_name
    assert by_hand.log_entry("daemon.started")["admin_group"] == ("perfd" if has_group else own)
    service = start_perfd(env=_service_env())
    assert ("access.group_missing" in service.events()) is not has_group
    configured = start_perfd('[server]\ngroup = "no-such-group-perfd"\n')
    assert configured.log_entry("access.group_missing")["level"] == "warning"


def test_service_rule() -> None:
    """A service: INVOCATION_ID set and the parent is pid 1 or $MANAGERPID; else by hand."""
    assert systemd.service_stop_command({}, 1) is None
    assert systemd.service_stop_command({"INVOCATION_ID": "x"}, 4242) is None  # a shell's child
    cgroup = "/nonexistent/cgroup"
    assert systemd.service_stop_command({"INVOCATION_ID": "x"}, 1, cgroup) == "systemctl stop perfd"
    user = {"INVOCATION_ID": "x", "MANAGERPID": "77"}
    assert systemd.service_stop_command(user, 77, cgroup) == "systemctl --user stop perfd"


def test_service_unit_comes_from_the_cgroup(tmp_path: Path) -> None:
    """The unit named in the stop command is the .service perfd's cgroup ends with."""
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/perfd-gpu.service\n")
    command_line = systemd.service_stop_command({"INVOCATION_ID": "x"}, 1, str(cgroup))
    assert command_line == "systemctl stop perfd-gpu.service"


def test_a_missing_config_file_logs_start_failed(short_dir: Path) -> None:
    """`perfd --config /nonexistent` logs the JSON daemon.start_failed line, like every
    other start failure, and says so on stderr."""
    out = run_perfd(short_dir / "r", "--config", "/nonexistent/perfd.toml")
    assert out.returncode == 1
    entry = start_failed(out)
    assert entry["path"] == "/nonexistent/perfd.toml"
    assert "file not found" in str(entry["error"])
    assert "/nonexistent/perfd.toml" in out.stderr
