"""perfctl's side of perfd's tcp:// endpoint: ``keygen`` and the --host/--key options.

    perfctl keygen ~/.config/perfd/laptop          # laptop.key + laptop.key_secret, 0600
    perfctl --host tcp://gpu-7:7710 --key ~/.config/perfd/laptop.key_secret stats

perfd's public key (its ``.key`` file) comes from ``--server-key FILE``, or from
``server.key`` beside the --key file. perfd.wire.keys does the file work; it is imported only here,
when a remote option is used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Final

from perfctl.client import Curve
from perfctl.errors import UsageError

SERVER_KEY_NAME: Final = "server.key"


def add_arguments(common: argparse._ActionsContainer) -> None:
    common.add_argument(
        "--host",
        default=argparse.SUPPRESS,
        metavar="tcp://HOST:PORT",
        help="a perfd's remote endpoint ([remote] listen); needs --key",
    )
    common.add_argument(
        "--key",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="with --host: this client's secret key file (perfctl keygen NAME writes "
        "NAME.key_secret)",
    )
    common.add_argument(
        "--server-key",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"with --host: perfd's public key file (default: {SERVER_KEY_NAME} beside --key)",
    )


def add_keygen(sub: argparse._SubParsersAction[Any], **kw: Any) -> argparse.ArgumentParser:
    """The keygen command's parser (``kw``: add_parser's help, description, parents...)."""
    keygen: argparse.ArgumentParser = sub.add_parser("keygen", **kw)
    keygen.add_argument("name", metavar="NAME", help="path and base name of the two files")
    keygen.add_argument(
        "--role",
        choices=("read", "admin"),
        default="read",
        help="the role shown in the authorized_keys line printed (default read)",
    )
    return keygen


def keygen(name: str, role: str, as_json: bool) -> int:
    """Write NAME.key and NAME.key_secret; print the public key and its authorized_keys line."""
    from perfd.wire import keys

    if not keys.curve_available():
        print("perfctl: this libzmq was built without CURVE support", file=sys.stderr)
        return 1
    base = Path(name)
    made = _make_parent(base.parent)
    if isinstance(made, str):
        return _keygen_failed(made, "choose a directory you can write to, or create it first")
    try:
        public_path, secret_path = keys.write_pair(base, keys.generate())
    except FileExistsError as exc:
        return _keygen_failed(str(exc), "", status=2)
    except OSError as exc:
        return _keygen_failed(f"cannot write {exc.filename or name}: {exc.strerror}", "")
    public = keys.read_pair(public_path).public.decode()
    line = f"{public} {role} {base.name}"
    if as_json:
        result = {
            "public_key": public,
            "public_file": str(public_path),
            "secret_file": str(secret_path),
            "authorized_keys_line": line,
        }
        print(json.dumps({"schema": 1, **result}, indent=2))
        return 0
    if made:
        print(f"created {base.parent} (mode 0700)")
    print(f"wrote {public_path} (public) and {secret_path} (secret), mode 0600")
    print(f"public key: {public}")
    print("for a client, add this line to perfd's [remote] authorized_keys file:")
    print(f"  {line}")
    print(f"for perfd itself, set [remote] secret_key_file = {str(secret_path)!r}")
    return 0


def _make_parent(directory: Path) -> bool | str:
    """Create the keys' directory when it is missing (mode 0700: it holds a secret key);
    True when made, False when it was there, else what went wrong."""
    if directory.is_dir():
        return False
    if os.path.lexists(directory):
        return f"{directory} is not a directory, so it cannot hold the keys"
    try:
        os.makedirs(directory, mode=0o700)
    except OSError as exc:
        return f"cannot create the directory {directory} for the keys: {exc.strerror}"
    return True


def _keygen_failed(message: str, hint: str, status: int = 1) -> int:
    print(f"perfctl: {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return status


def curve(host: str | None, key: str | None, server_key: str | None) -> Curve | None:
    """The keys for ``--host``; None without it. UsageError says what is missing."""
    if host is None:
        if key is not None or server_key is not None:
            raise UsageError("--key and --server-key go with --host tcp://HOST:PORT")
        return None
    if not host.startswith("tcp://"):
        raise UsageError(f"--host takes tcp://HOST:PORT, not {host!r} (local: --socket PATH)")
    if key is None:
        raise UsageError("--host needs --key FILE, this client's secret key (perfctl keygen)")
    from perfd.wire import keys

    server_file = Path(server_key) if server_key else Path(key).parent / SERVER_KEY_NAME
    try:
        pair = keys.read_secret_pair(Path(key))
        server = keys.read_pair(server_file).public
    except keys.KeyFileError as exc:
        hint = "" if server_key or os.path.exists(server_file) else " (or give --server-key)"
        raise UsageError(f"{exc}{hint}") from None
    assert pair.secret is not None
    return Curve(pair.public, pair.secret, server)
