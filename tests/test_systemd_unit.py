"""Checks for the systemd unit and the sysusers.d file shipped in systemd/."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from perfd.config import MetricsConfig

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


def test_unit_bounds_memory_with_a_modest_oom_preference() -> None:
    """perfd has MemoryMax=1G, keeps a MemoryMin= reservation below it, and only a modest
    OOMScoreAdjust: clients can make it grow, so it is no longer nearly exempt (-900)."""
    service = service_directives(UNIT_PATH.read_text())
    assert service["MemoryMax"] == ["1G"]
    (adjust,) = service["OOMScoreAdjust"]
    assert -200 <= int(adjust) <= 0
    (minimum,) = service["MemoryMin"]
    assert minimum.endswith("M")
    assert 0 < int(minimum[:-1]) < 1024


def test_unit_limits_files_and_core_dumps() -> None:
    """LimitNOFILE= holds perfd's largest metrics connection cap with room to spare (sockets,
    ZeroMQ peers, model files); no core dumps (they would hold keys and tokens)."""
    service = service_directives(UNIT_PATH.read_text())
    (nofile,) = service["LimitNOFILE"]
    assert ":" not in nofile  # soft = hard: perfd's raise_fd_limit() has nothing to guess
    cap = next(f for f in dataclasses.fields(MetricsConfig) if f.name == "max_connections")
    assert int(nofile) >= int(cap.metadata["max"]) + 4096
    assert service["LimitCORE"] == ["0"]


# What IPAddressAllow='s keywords stand for (systemd.resource-control(5)).
_KEYWORDS = {
    "localhost": ["127.0.0.0/8", "::1/128"],
    "link-local": ["169.254.0.0/16", "fe80::/64"],
    "multicast": ["224.0.0.0/4", "ff00::/8"],
    "any": ["0.0.0.0/0", "::/0"],
}


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    service = service_directives(UNIT_PATH.read_text())
    assert service["IPAddressDeny"] == ["any"]
    networks = []
    for value in service["IPAddressAllow"]:
        for token in value.split():
            for spelled in _KEYWORDS.get(token, [token]):
                networks.append(ipaddress.ip_network(spelled))
    return networks


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("169.254.169.254", False),  # cloud metadata services
        ("169.254.0.1", False),
        ("fe80::1", False),
        ("224.0.0.251", False),  # multicast
        ("255.255.255.255", False),
        ("ff02::1", False),
        ("127.0.0.1", True),
        ("::1", True),
        ("10.20.0.5", True),
        ("172.16.0.1", True),
        ("192.168.1.10", True),
        ("128.0.0.1", True),
        ("169.253.255.255", True),  # the neighbours of 169.254.0.0/16 stay allowed
        ("169.255.0.1", True),
        ("1.1.1.1", True),
        ("104.18.2.161", True),
        ("2606:4700::1111", True),
        ("fd00::5", True),
    ],
)
def test_unit_allows_unicast_but_not_link_local(address: str, allowed: bool) -> None:
    """IPAddressAllow= lets perfd reach loopback, private and public unicast addresses, but
    no link-local (169.254.0.0/16, fe80::/10), multicast or broadcast address."""
    ip = ipaddress.ip_address(address)
    assert any(ip in net for net in _allowed_networks() if net.version == ip.version) is allowed


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
