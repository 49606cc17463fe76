"""Checks for the systemd unit and the sysusers.d file shipped in systemd/."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
UNIT_PATH = REPO_ROOT / "systemd" / "perfd.service"
SYSUSERS_PATH = REPO_ROOT / "systemd" / "perfd.sysusers"

MAX_EXPOSURE = 1.5
PERFD_BINARY = "/opt/perfd/bin/perfd"
# systemd's spellings of a true boolean.
SYSTEMD_TRUE = {"1", "yes", "y", "true", "t", "on"}

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMD_SYSUSERS = shutil.which("systemd-sysusers")

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (CI installs the systemd package)",
)
needs_systemd_sysusers = pytest.mark.skipif(
    SYSTEMD_SYSUSERS is None,
    reason="systemd-sysusers is not installed (CI installs the systemd package)",
)

# ExecStart=/ExecStartPre= with their optional special-executable prefixes (-, @, :, +, !).
EXEC_LINE = re.compile(r"^(?P<key>ExecStart(?:Pre)?=)(?P<flags>[-@:+!]*)(?P<path>\S+)(?P<rest>.*)$")
EXPOSURE_LINE = re.compile(r"Overall exposure level for \S+: (?P<level>\d+\.\d+)")


def service_directives(unit_text: str) -> dict[str, list[str]]:
    """Return the [Service] section's settings, each key mapped to its values in order."""
    directives: dict[str, list[str]] = {}
    section = None
    for raw_line in unit_text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service":
            key, _, value = line.partition("=")
            directives.setdefault(key.strip(), []).append(value.strip())
    return directives


def run_tool(tool: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a systemd tool (found by shutil.which; its skip mark guarantees it is there)."""
    assert tool is not None
    env = dict(os.environ)
    # "info" is systemd's built-in default; pinned so that e.g. SYSTEMD_LOG_LEVEL=debug in the
    # caller's environment cannot fill stderr with debug chatter. Warnings are still printed.
    env["SYSTEMD_LOG_LEVEL"] = "info"
    env["SYSTEMD_COLORS"] = "0"
    return subprocess.run([tool, *args], capture_output=True, text=True, env=env, check=False)


def read_colon_file(path: Path) -> dict[str, list[str]]:
    """Parse an /etc/passwd-style file into {name: fields}."""
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines()}


@pytest.fixture
def unit_copy(tmp_path: Path) -> Path:
    """The unit copied into tmp_path, ExecStart(Pre) pointing at an executable stub.

    `systemd-analyze verify` checks that the binaries exist, and /opt/perfd is not installed
    here. Only the binary path on those lines changes; every other line stays identical.
    """
    stub = tmp_path / "perfd-stub"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)

    lines: list[str] = []
    rewritten = 0
    for line in UNIT_PATH.read_text().splitlines():
        match = EXEC_LINE.match(line)
        if match:
            lines.append(f"{match['key']}{match['flags']}{stub}{match['rest']}")
            rewritten += 1
        else:
            lines.append(line)
    assert rewritten >= 1, "the unit has no ExecStart= line"

    copy = tmp_path / UNIT_PATH.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(unit_copy: Path) -> None:
    """`systemd-analyze verify` accepts the unit with exit status 0 and nothing on stderr."""
    # verify also loads the host units ours depends on (sysinit.target, basic.target, ...);
    # on a standard systemd installation that prints nothing, so no stderr line is filtered.
    result = run_tool(SYSTEMD_ANALYZE, "verify", str(unit_copy))
    assert result.stderr == ""
    assert result.returncode == 0


@needs_systemd_analyze
def test_unit_exposure_is_at_most_1_5(unit_copy: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit's overall exposure 1.5 or lower."""
    result = run_tool(SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(unit_copy))
    assert result.returncode == 0, result.stderr
    match = EXPOSURE_LINE.search(result.stdout)
    assert match is not None, result.stdout
    assert float(match["level"]) <= MAX_EXPOSURE, result.stdout


def test_unit_is_a_notify_service_with_watchdog_and_reload() -> None:
    """perfd is a Type=notify service from /opt/perfd with a 30 s watchdog and SIGHUP reload."""
    service = service_directives(UNIT_PATH.read_text())
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["Restart"] == ["on-failure"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert len(service["ExecStart"]) == 1
    assert service["ExecStart"][0].split()[0] == PERFD_BINARY


def test_unit_runs_as_perfd_with_its_directories() -> None:
    """perfd runs as user/group perfd, with a world-traversable /run/perfd and its own dirs."""
    service = service_directives(UNIT_PATH.read_text())
    assert service["User"] == ["perfd"]
    assert service["Group"] == ["perfd"]
    assert service["RuntimeDirectory"] == ["perfd"]
    assert service["RuntimeDirectoryMode"] == ["0755"]
    assert service["StateDirectory"] == ["perfd"]
    assert service["ConfigurationDirectory"] == ["perfd"]


def test_unit_shields_perfd_from_memory_pressure() -> None:
    """perfd is nearly exempt from the OOM killer and has a MemoryMin= reservation."""
    service = service_directives(UNIT_PATH.read_text())
    assert service["OOMScoreAdjust"] == ["-900"]
    assert len(service["MemoryMin"]) == 1
    assert service["MemoryMin"][0] not in ("", "0")


def test_unit_keeps_nvidia_devices_and_proc_visible() -> None:
    """Only NVIDIA devices are allowed; /dev/nvidia* and other processes' /proc stay visible."""
    service = service_directives(UNIT_PATH.read_text())
    assert service["DevicePolicy"] == ["closed"]
    assert any("nvidiactl" in allow for allow in service.get("DeviceAllow", []))
    assert not SYSTEMD_TRUE & {value.lower() for value in service.get("PrivateDevices", [])}
    assert "invisible" not in service.get("ProtectProc", [])
    assert "pid" not in service.get("ProcSubset", [])


def test_sysusers_file_declares_perfd_group_and_user() -> None:
    """The sysusers.d file declares group perfd and system user perfd (home /var/lib/perfd)."""
    # Fields: type, name, ID, GECOS, home, shell (sysusers.d(5)); GECOS is quoted.
    entries = [
        shlex.split(line)
        for line in SYSUSERS_PATH.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [entry[:2] for entry in entries if entry[0] == "g"] == [["g", "perfd"]]
    users = [entry for entry in entries if entry[0] == "u"]
    assert len(users) == 1
    assert users[0][1] == "perfd"
    assert users[0][4] == "/var/lib/perfd"


@needs_systemd_sysusers
def test_systemd_sysusers_creates_perfd_system_user(tmp_path: Path) -> None:
    """systemd-sysusers, run on an empty root, creates group perfd and a nologin user perfd."""
    (tmp_path / "etc").mkdir()
    result = run_tool(SYSTEMD_SYSUSERS, f"--root={tmp_path}", str(SYSUSERS_PATH))
    assert result.returncode == 0, result.stderr

    groups = read_colon_file(tmp_path / "etc" / "group")
    users = read_colon_file(tmp_path / "etc" / "passwd")
    assert "perfd" in groups
    _name, _password, uid, gid, _gecos, home, shell = users["perfd"]
    assert gid == groups["perfd"][2]
    assert int(uid) < 1000  # a system user
    assert home == "/var/lib/perfd"
    assert shell.endswith("/nologin")
