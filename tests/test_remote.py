"""perfd's optional tcp endpoint on loopback: CURVE keys from the real `perfctl keygen`, the
real perfctl with --host/--key, read and admin keys, refusals, revocation by reload."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from perfctl import AccessDenied, Client, Curve, Forbidden, KeyRefused
from perfd.wire import keys
from tests.conftest import Perfd, StartPerfd, clean_env, command

pytestmark = pytest.mark.skipif(not keys.curve_available(), reason="libzmq without CURVE")


def keygen(base: Path, *extra: str) -> dict[str, str]:
    """Run the real `perfctl keygen BASE --json`; return its JSON result."""
    result = subprocess.run(
        [*command("perfctl"), "keygen", str(base), "--json", *extra],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, str] = json.loads(result.stdout)
    return out


@dataclass
class Remote:
    perfd: Perfd
    endpoint: str
    keys: Path  # the directory holding every key file
    authorized: Path

    def ctl(self, key: str, *args: str) -> subprocess.CompletedProcess[str]:
        """The real perfctl against the tcp endpoint with ``key``.key_secret."""
        return self.perfd.ctl(
            "--host", self.endpoint, "--key", str(self.keys / f"{key}.key_secret"), *args
        )

    def client(self, key: str, **kw: float) -> Client:
        pair = keys.read_secret_pair(self.keys / f"{key}.key_secret")
        server = keys.read_pair(self.keys / "server.key").public
        assert pair.secret is not None
        return Client(self.endpoint, curve=Curve(pair.public, pair.secret, server), **kw)


@pytest.fixture
def remote(start_perfd: StartPerfd, tmp_path: Path) -> Remote:
    """A perfd serving tcp://127.0.0.1 (a free port) to an admin key and a read key."""
    directory = tmp_path / "keys"
    directory.mkdir()
    keygen(directory / "server")
    admin = keygen(directory / "ops", "--role", "admin")
    reader = keygen(directory / "grafana")
    keygen(directory / "stranger")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(
        f"# perfd clients\n{admin['authorized_keys_line']}\n{reader['authorized_keys_line']}\n"
    )
    perfd = start_perfd(
        "[remote]\n"
        'listen = "tcp://127.0.0.1:0"\n'
        f'secret_key_file = "{directory / "server.key_secret"}"\n'
        f'authorized_keys = "{authorized}"\n'
    )
    endpoint = perfd.log_entry("remote.listening")["endpoint"]
    return Remote(perfd, endpoint, directory, authorized)


def test_keygen_writes_a_0600_pair_and_refuses_to_overwrite(tmp_path: Path) -> None:
    """`perfctl keygen` writes NAME.key and NAME.key_secret, both 0600; a second run exits 2."""
    result = keygen(tmp_path / "laptop")
    for name in ("laptop.key", "laptop.key_secret"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    assert result["authorized_keys_line"] == f"{result['public_key']} read laptop"
    again = subprocess.run(
        [*command("perfctl"), "keygen", str(tmp_path / "laptop")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert "usage:" not in again.stderr


def test_keygen_creates_a_missing_directory_0700(tmp_path: Path) -> None:
    """`perfctl keygen ~/.config/perfd/laptop` on a fresh machine creates the missing
    directories, the last one 0700 (it holds a secret key); a path under a file is named."""
    base = tmp_path / "home" / ".config" / "perfd" / "laptop"
    out = subprocess.run(
        [*command("perfctl"), "keygen", str(base)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"created {base.parent} (mode 0700)\n")
    assert stat.S_IMODE(base.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(base.with_name("laptop.key_secret").stat().st_mode) == 0o600
    (tmp_path / "file").write_text("")
    under_a_file = subprocess.run(
        [*command("perfctl"), "keygen", str(tmp_path / "file" / "laptop")],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=20,
    )
    assert under_a_file.returncode == 1
    assert f"{tmp_path / 'file'} is not a directory" in under_a_file.stderr
    assert "usage:" not in under_a_file.stderr


def test_admin_key_runs_every_command_and_is_logged(remote: Remote) -> None:
    """The admin key pings, reads stats and reloads; the reload is logged with its key name
    and address."""
    assert remote.ctl("ops", "ping").returncode == 0
    stats = remote.ctl("ops", "--json", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "host" in json.loads(stats.stdout)
    reload = remote.ctl("ops", "reload")
    assert reload.returncode == 0, reload.stderr
    entry = remote.perfd.log_entry("command.admin")
    assert (entry["cmd"], entry["key"], entry["address"]) == ("reload", "ops", "127.0.0.1")


def test_read_key_reads_but_cannot_change(remote: Remote) -> None:
    """A read key gets status; reload is forbidden (exit 4) naming the key as read-only."""
    status = remote.ctl("grafana", "--json", "status")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["components"]["remote"] == remote.endpoint
    reload = remote.ctl("grafana", "reload")
    assert reload.returncode == 4
    assert "needs an admin key; key 'grafana' is read-only" in reload.stderr
    with remote.client("grafana") as client, pytest.raises(Forbidden):
        client.evict(all=True)


def test_a_read_keys_refused_admin_command_is_logged(remote: Remote) -> None:
    """A read key's reload is logged as access.denied with the command, the key's name, its
    address and the reason; more refusals within the minute are counted, not logged."""
    assert remote.ctl("grafana", "reload").returncode == 4
    with remote.client("grafana") as client, pytest.raises(Forbidden):
        client.evict(all=True)
    assert remote.ctl("ops", "ping").returncode == 0  # a sync point: both refusals handled
    denied = [e for e in remote.perfd.logs() if e["event"] == "access.denied"]
    assert len(denied) == 1
    (entry,) = denied
    assert (entry["cmd"], entry["key"], entry["address"]) == ("reload", "grafana", "127.0.0.1")
    assert (
        entry["reason"]
        == "'reload' changes perfd and needs an admin key; key 'grafana' is read-only"
    )


@pytest.mark.parametrize("change", ["chmod 0666", "chown nobody"])
def test_an_authorized_keys_file_others_could_change_is_refused(
    start_perfd: StartPerfd, tmp_path: Path, change: str
) -> None:
    """perfd refuses to start when authorized_keys is writable by others or owned by
    another user (like sshd's StrictModes): exit 1, the file and the remedy named."""
    if change == "chown nobody" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root (CI runs as root)")
    keygen(tmp_path / "server")
    client = keygen(tmp_path / "client")
    ak = tmp_path / "ak"
    ak.write_text(client["authorized_keys_line"] + "\n")
    if change == "chmod 0666":
        ak.chmod(0o666)
        problem = f"{ak} is mode 0666: writable by its group or others"
    else:
        os.chown(ak, 65534, 65534)
        problem = f"{ak} is owned by uid 65534"
    perfd = start_perfd(
        "[remote]\n"
        'listen = "tcp://127.0.0.1:0"\n'
        f'secret_key_file = "{tmp_path / "server.key_secret"}"\n'
        f'authorized_keys = "{ak}"\n',
        wait_ready=False,
    )
    assert perfd.proc.wait(20) == 1
    assert problem in perfd.log_path.read_text()
    assert not perfd.admin_socket.exists()


def test_a_loosened_authorized_keys_on_reload_keeps_the_old_list(remote: Remote) -> None:
    """authorized_keys made group-writable, then reload: config_invalid, the old keys stay."""
    remote.authorized.chmod(0o664)
    result = remote.ctl("ops", "reload")
    assert result.returncode == 1
    assert "writable by its group or others" in result.stderr
    assert remote.ctl("grafana", "ping").returncode == 0


def test_unknown_key_is_refused_at_the_handshake(remote: Remote) -> None:
    """A key not in authorized_keys gets KeyRefused (exit 4) at once, not a timeout, and
    perfd logs the refused key."""
    result = remote.ctl("stranger", "ping")
    assert result.returncode == 4
    assert "refused this client key" in result.stderr
    assert "authorized_keys" in result.stderr
    with remote.client("stranger", timeout=30) as client, pytest.raises(KeyRefused):
        client.ping()  # raised well before the 30 s timeout
    stranger = keys.read_pair(remote.keys / "stranger.key").public.decode()
    assert remote.perfd.log_entry("access.denied")["key"] == stranger


def test_a_wrong_server_key_times_out_with_a_hint(remote: Remote) -> None:
    """A client holding the wrong server key cannot complete the handshake: timeout, hint."""
    result = remote.perfd.ctl(
        "--host",
        remote.endpoint,
        "--key",
        str(remote.keys / "ops.key_secret"),
        "--server-key",
        str(remote.keys / "grafana.key"),
        "--timeout",
        "0.5",
        "ping",
    )
    assert result.returncode == 3
    assert "is perfd's public key (--server-key) the right one?" in result.stderr


def test_revoking_a_key_by_reload(remote: Remote) -> None:
    """Removing the read key and reloading refuses its next request, even on an open
    connection."""
    with remote.client("grafana") as client:
        assert client.ping()["pong"] is True
        lines = remote.authorized.read_text().splitlines()
        remote.authorized.write_text("\n".join(line for line in lines if "grafana" not in line))
        assert remote.ctl("ops", "reload").returncode == 0
        with pytest.raises(Forbidden, match="no longer in perfd's authorized_keys"):
            client.ping()
    with remote.client("grafana") as fresh, pytest.raises(AccessDenied):
        fresh.ping()


def test_a_bad_authorized_keys_file_on_reload_keeps_the_old_one(remote: Remote) -> None:
    """A broken authorized_keys makes reload fail with config_invalid; old keys stay."""
    remote.authorized.write_text("garbage admin\n")
    result = remote.ctl("ops", "reload")
    assert result.returncode == 1
    assert "authorized_keys" in result.stderr
    assert "is not a 40-character Z85 public key" in result.stderr
    assert remote.ctl("grafana", "ping").returncode == 0


def test_local_sockets_still_work_beside_tcp(remote: Remote) -> None:
    """With the tcp endpoint on, the ipc sockets answer as before (no CURVE on them)."""
    assert remote.perfd.ctl("ping").returncode == 0
    assert remote.perfd.ctl("reload").returncode == 0


@pytest.mark.parametrize(
    ("remote_table", "problem"),
    [
        ('listen = "tcp://127.0.0.1:0"\n', "a tcp endpoint needs perfd's CURVE key pair"),
        (
            'listen = "tcp://127.0.0.1:0"\nsecret_key_file = "{secret}"\n',
            "a tcp endpoint needs a list of client public keys",
        ),
        (
            'listen = "tcp://127.0.0.1:0"\nsecret_key_file = "{public}"\n'
            'authorized_keys = "{ak}"\n',
            "holds only a public key",
        ),
        (
            'listen = "tcp://127.0.0.1:0"\nsecret_key_file = "{secret}"\n'
            'authorized_keys = "{empty}"\n',
            "lists no keys",
        ),
        ('listen = "ipc:///tmp/x"\n', 'remote.listen: must be "tcp://HOST:PORT"'),
    ],
)
def test_perfd_refuses_tcp_without_usable_keys(
    start_perfd: StartPerfd, tmp_path: Path, remote_table: str, problem: str
) -> None:
    """A tcp endpoint without keys (or with unusable ones) stops perfd at start: exit 1,
    the reason on stderr, no socket left behind."""
    keygen(tmp_path / "server")
    client = keygen(tmp_path / "client")
    ak = tmp_path / "ak"
    ak.write_text(client["authorized_keys_line"] + "\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    text = remote_table.format(
        secret=tmp_path / "server.key_secret", public=tmp_path / "server.key", ak=ak, empty=empty
    )
    perfd = start_perfd(f"[remote]\n{text}", wait_ready=False)
    assert perfd.proc.wait(20) == 1
    output = perfd.log_path.read_text()
    assert problem in output
    assert not perfd.admin_socket.exists()
