"""Access control: socket modes and group, peer credentials, the admin allow-list, seen by
real unprivileged users (a forked child that drops to uid nobody) against a real perfd."""

from __future__ import annotations

import grp
import os
import stat
import sys
import traceback
from pathlib import Path

import pytest

import perfctl.__main__ as cli
from perfd.server.access import AdminPolicy, Peer
from tests.conftest import StartPerfd

NOBODY = 65534
NOGROUP = 65534

as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="running perfctl as another uid needs root (CI runs as root)"
)

_last_pid = 0


def run_as(
    uid: int, argv: list[str], runtime_dir: Path, groups: tuple[int, ...] = ()
) -> tuple[int, str, str]:
    """Run perfctl's real main() in a forked child that dropped to ``uid`` (no groups).

    A fork, not an exec: the interpreter may live under a directory that uid cannot read,
    so everything perfctl needs is imported before the privileges are dropped.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.setgroups(list(groups))
            os.setgid(uid)
            os.setuid(uid)
            os.environ["PERFD_RUNTIME_DIR"] = str(runtime_dir)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            code = cli.main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    global _last_pid
    _last_pid = pid
    os.close(out_w)
    os.close(err_w)
    with open(out_r) as out, open(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr


@as_root
def test_unprivileged_user_reads_but_cannot_reload(start_perfd: StartPerfd) -> None:
    """nobody: status works through perfd-ro.sock; reload exits 4 with a hint about the group."""
    perfd = start_perfd()
    code, out, err = run_as(NOBODY, ["status", "--json"], perfd.runtime_dir)
    assert code == 0, err
    assert f'"pid": {perfd.proc.pid}' in out
    code, out, err = run_as(NOBODY, ["reload"], perfd.runtime_dir)
    assert code == 4, err
    assert "permission denied" in err
    group = grp.getgrgid(perfd.admin_socket.stat().st_gid).gr_name  # perfd, if it exists here
    assert f"hint: perfd.sock belongs to group {group}: " in err
    assert f"usermod -aG {group} $USER" in err


@as_root
@pytest.mark.parametrize("group", ["daemon", "no-such-group-perfd"])
def test_the_permission_hint_names_the_sockets_real_group(
    start_perfd: StartPerfd, group: str
) -> None:
    """perfd.sock of group daemon: the hint says usermod -aG daemon, not perfd; with a group
    that does not exist, the socket has perfd's own group and the hint says why."""
    perfd = start_perfd(f'[server]\ngroup = "{group}"\n')
    code, _, err = run_as(NOBODY, ["reload"], perfd.runtime_dir)
    assert code == 4, err
    if group == "daemon":
        assert "hint: perfd.sock belongs to group daemon: ask an admin to add you to it " in err
        assert "usermod -aG daemon $USER" in err
        assert "perfd's own group" not in err
    else:
        assert "hint: perfd.sock belongs to group root: " in err
        assert "root is perfd's own group: is its [server] group missing on this host?" in err
    assert "usermod -aG perfd " not in err


@as_root
def test_unprivileged_user_forbidden_on_readonly_socket(start_perfd: StartPerfd) -> None:
    """nobody sending reload straight to perfd-ro.sock gets perfd's `forbidden`, exit 4."""
    perfd = start_perfd()
    code, out, err = run_as(
        NOBODY, ["--socket", str(perfd.readonly_socket), "--json", "reload"], perfd.runtime_dir
    )
    assert code == 4, err
    assert '"code": "forbidden"' in out
    assert "needs the admin socket" in err


# -- the policy, as pure logic ----------------------------------------------------------------


def test_peer_address_is_parsed() -> None:
    """libzmq's ipc Peer-Address `localhost:UID:GID:PID` becomes uid, gid and pid."""
    assert Peer.from_ipc("localhost:1000:1001:4242") == Peer(uid=1000, gid=1001, pid=4242)
    assert Peer.from_ipc(":0:0:7") == Peer(uid=0, gid=0, pid=7)
    assert Peer.from_ipc(None) == Peer()
    assert Peer.from_ipc("127.0.0.1") == Peer()


def test_policy_allows_root_service_user_groups_and_listed_users() -> None:
    """root and perfd's own uid always; others only through admin_users or admin_groups."""
    policy = AdminPolicy(service_uid=4242, groups=("no-such-group-perfd",))
    assert policy.refusal(Peer(uid=0, gid=0, pid=1)) is None
    assert policy.refusal(Peer(uid=4242, gid=4242, pid=1)) is None
    refusal = policy.refusal(Peer(uid=NOBODY, gid=NOGROUP, pid=1))
    assert refusal is not None
    assert refusal.startswith("nobody may not run admin commands")
    assert AdminPolicy(users=("nobody",)).refusal(Peer(uid=NOBODY, gid=NOGROUP)) is None
    assert AdminPolicy(users=(str(NOBODY),)).refusal(Peer(uid=NOBODY, gid=NOGROUP)) is None
    assert AdminPolicy(groups=("nogroup",)).refusal(Peer(uid=NOBODY, gid=NOGROUP)) is None
    # a supplementary group from the user database counts too
    member = AdminPolicy(groups=("daemon",)).refusal(Peer(uid=NOBODY, gid=NOGROUP))
    assert (member is None) == ("nobody" in grp.getgrnam("daemon").gr_mem)


@pytest.mark.parametrize(
    ("users", "groups", "service_uid", "allowed"),
    [
        ((), ("daemon",), 0, "root and members of group daemon"),
        ((), ("daemon", "daemon"), 0, "root and members of group daemon"),
        (
            (),
            ("daemon", "nogroup"),
            4242,
            "root, perfd's own user uid 4242 and members of groups daemon and nogroup",
        ),
        (
            ("alice",),
            ("daemon",),
            0,
            "root, members of group daemon and the user alice ([access] admin_users)",
        ),
        (("alice", "bob"), (), 0, "root and the users alice and bob ([access] admin_users)"),
        (
            (),
            ("no-such-group-perfd",),
            0,
            "root and members of group no-such-group-perfd (no such group here)",
        ),
        ((), (), 0, "root"),
    ],
)
def test_refusal_names_who_may_as_configured(
    users: tuple[str, ...], groups: tuple[str, ...], service_uid: int, allowed: str
) -> None:
    """The refusal lists exactly who may: no empty "groups" list, no admin_users when none,
    a missing group marked, one group singular."""
    policy = AdminPolicy(users=users, groups=groups, service_uid=service_uid)
    refusal = policy.refusal(Peer(uid=NOBODY + 1000, gid=NOGROUP + 1000, pid=1))
    assert refusal == f"uid {NOBODY + 1000} may not run admin commands: only {allowed} may"


def test_policy_counts_the_process_supplementary_groups(tmp_path: Path) -> None:
    """A process with the admin group among its supplementary groups (a service with
    SupplementaryGroups=perfd) is allowed, read from /proc/PID/status while the pid still
    runs as the peer's uid."""
    proc = tmp_path / "proc"
    for pid, uid, groups in ((100, NOBODY, "1 27"), (101, 1234, "1"), (102, NOBODY, "27")):
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "status").write_text(
            f"Name:\tapp\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGroups:\t{groups}\n"
        )
    policy = AdminPolicy(groups=("daemon",), proc=proc)  # gid 1
    assert grp.getgrnam("daemon").gr_gid == 1
    assert policy.refusal(Peer(uid=NOBODY, gid=NOGROUP, pid=100)) is None
    assert policy.refusal(Peer(uid=NOBODY, gid=NOGROUP, pid=101)) is not None  # pid reused
    assert policy.refusal(Peer(uid=NOBODY, gid=NOGROUP, pid=102)) is not None  # not a member
    assert policy.refusal(Peer(uid=NOBODY, gid=NOGROUP, pid=999)) is not None  # gone


def test_policy_refuses_a_peer_without_credentials() -> None:
    """No credentials (a transport without SO_PEERCRED) is refused, never assumed root."""
    refusal = AdminPolicy().refusal(Peer())
    assert refusal is not None
    assert "cannot tell who sent this request" in refusal


def test_policy_caches_lookups_for_its_ttl() -> None:
    """A decision is cached per uid and gid for `ttl` seconds of the injected clock."""
    now = [0.0]
    policy = AdminPolicy(users=("nobody",), clock=lambda: now[0], ttl=30)
    peer = Peer(uid=NOBODY, gid=NOGROUP)
    assert policy.refusal(peer) is None
    policy.users = ()
    assert policy.refusal(peer) is None  # cached
    now[0] = 31.0
    assert policy.refusal(peer) is not None


def test_unknown_names_are_reported() -> None:
    """Configured users and groups that do not exist are listed for a warning."""
    policy = AdminPolicy(users=("nobody", "no-such-user-perfd"), groups=("no-such-group-perfd",))
    assert policy.unknown_names() == ["user no-such-user-perfd", "group no-such-group-perfd"]


# -- a real perfd -------------------------------------------------------------------------------


def _group_we_may_give(name: str) -> str | None:
    """Why perfd, run by us, cannot give its socket to group ``name``; None when it can."""
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        return f"this host has no group {name!r}"
    if os.geteuid() != 0 and gid not in os.getgroups():
        return f"not root and not a member of group {name!r}, so chown() to it is refused"
    return None


def test_admin_socket_group_and_modes(start_perfd: StartPerfd) -> None:
    """[server] group owns perfd.sock (0660); perfd-ro.sock is 0666; the directory 0755."""
    why = _group_we_may_give("daemon")
    if why is not None:
        pytest.skip(f"needs root or membership of group daemon (CI runs as root): {why}")
    perfd = start_perfd('[server]\ngroup = "daemon"\n')
    admin = perfd.admin_socket.stat()
    assert admin.st_gid == grp.getgrnam("daemon").gr_gid
    assert stat.S_IMODE(admin.st_mode) == 0o660
    assert stat.S_IMODE(perfd.readonly_socket.stat().st_mode) == 0o666
    assert stat.S_IMODE(perfd.runtime_dir.stat().st_mode) == 0o755


def test_mutating_commands_log_the_callers_uid_and_pid(start_perfd: StartPerfd) -> None:
    """reload through perfctl logs command.admin with perfctl's uid, gid, pid and user."""
    perfd = start_perfd()
    result = perfd.ctl("reload")
    assert result.returncode == 0, result.stderr
    entry = perfd.log_entry("command.admin")
    assert entry["cmd"] == "reload"
    assert entry["uid"] == os.geteuid()
    assert entry["gid"] == os.getegid()
    assert isinstance(entry["pid"], int)
    assert entry["pid"] not in (os.getpid(), perfd.proc.pid)  # perfctl's own process
    assert entry["user"]


@as_root
def test_a_loose_socket_mode_grants_no_control(start_perfd: StartPerfd) -> None:
    """With perfd.sock chmod 666, nobody connects and reads, but admin commands are refused
    by uid (exit 4), and the refusal is logged with nobody's uid and pid."""
    perfd = start_perfd()
    perfd.admin_socket.chmod(0o666)
    socket = ["--socket", str(perfd.admin_socket)]
    code, out, err = run_as(NOBODY, [*socket, "status", "--json"], perfd.runtime_dir)
    assert code == 0, err
    code, out, err = run_as(NOBODY, [*socket, "--json", "reload"], perfd.runtime_dir)
    assert code == 4, err
    assert '"code": "forbidden"' in out
    assert "nobody may not run admin commands" in err
    assert "hint: ask an admin to add you to one of those groups" in err
    entry = perfd.log_entry("access.denied")
    assert (entry["cmd"], entry["uid"], entry["gid"]) == ("reload", NOBODY, NOGROUP)
    assert entry["pid"] == _last_pid
    assert "command.admin" not in perfd.events()


@as_root
@pytest.mark.parametrize(
    "access", ['admin_users = ["nobody"]', "admin_users = ['65534']", 'admin_groups = ["nogroup"]']
)
def test_the_allow_list_grants_control(start_perfd: StartPerfd, access: str) -> None:
    """nobody, listed in [access] admin_users or through admin_groups, may reload."""
    perfd = start_perfd(f"[access]\n{access}\n")
    perfd.admin_socket.chmod(0o666)
    code, _, err = run_as(
        NOBODY, ["--socket", str(perfd.admin_socket), "reload"], perfd.runtime_dir
    )
    assert code == 0, err
    entry = perfd.log_entry("command.admin")
    assert (entry["uid"], entry["user"], entry["pid"]) == (NOBODY, "nobody", _last_pid)


@as_root
def test_a_service_with_the_group_as_supplementary_group_may_infer(
    start_perfd: StartPerfd,
) -> None:
    """A process of nobody whose supplementary groups hold the admin socket's group (as
    SupplementaryGroups=perfd gives a service) runs admin commands; without it, refused."""
    perfd = start_perfd('[server]\ngroup = "daemon"\n')
    argv = ["--socket", str(perfd.admin_socket), "reload"]
    daemon_gid = grp.getgrnam("daemon").gr_gid
    code, _, err = run_as(NOBODY, argv, perfd.runtime_dir, groups=(daemon_gid,))
    assert code == 0, err
    perfd.admin_socket.chmod(0o666)
    assert run_as(NOBODY, argv, perfd.runtime_dir)[0] == 4


@as_root
def test_reload_changes_the_allow_list(start_perfd: StartPerfd) -> None:
    """Adding nobody to admin_users and reloading grants control without a restart."""
    perfd = start_perfd()
    perfd.admin_socket.chmod(0o666)
    argv = ["--socket", str(perfd.admin_socket), "reload"]
    assert run_as(NOBODY, argv, perfd.runtime_dir)[0] == 4
    perfd.config_path.write_text('[access]\nadmin_users = ["nobody"]\n')
    assert perfd.ctl("reload").returncode == 0
    code, _, err = run_as(NOBODY, argv, perfd.runtime_dir)
    assert code == 0, err
