"""Access control seen by a real unprivileged user: read-only socket yes, admin commands no."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path

import pytest

import perfctl.__main__ as cli
from tests.conftest import StartPerfd

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="running perfctl as another uid needs root (CI runs as root)"
)


def run_as(uid: int, argv: list[str], runtime_dir: Path) -> tuple[int, str, str]:
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
            os.setgroups([])
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
    os.close(out_w)
    os.close(err_w)
    with open(out_r) as out, open(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr


def test_unprivileged_user_reads_but_cannot_reload(start_perfd: StartPerfd) -> None:
    """nobody: status works through perfd-ro.sock; reload exits 4 with a hint about the group."""
    perfd = start_perfd()
    code, out, err = run_as(NOBODY, ["status", "--json"], perfd.runtime_dir)
    assert code == 0, err
    assert f'"pid": {perfd.proc.pid}' in out
    code, out, err = run_as(NOBODY, ["reload"], perfd.runtime_dir)
    assert code == 4, err
    assert "permission denied" in err
    assert "usermod -aG perfd" in err


def test_unprivileged_user_forbidden_on_readonly_socket(start_perfd: StartPerfd) -> None:
    """nobody sending reload straight to perfd-ro.sock gets perfd's `forbidden`, exit 4."""
    perfd = start_perfd()
    code, out, err = run_as(
        NOBODY, ["--socket", str(perfd.readonly_socket), "--json", "reload"], perfd.runtime_dir
    )
    assert code == 4, err
    assert '"code": "forbidden"' in out
    assert "needs the admin socket" in err
