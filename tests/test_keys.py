"""CURVE key files and the authorized-keys list (perfd.wire.keys)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import zmq.auth

from perfd.wire import keys


def test_write_pair_creates_both_files_0600_and_never_overwrites(tmp_path: Path) -> None:
    """keygen's files are mode 0600 whatever the umask, and an existing pair is kept."""
    public_path, secret_path = keys.write_pair(tmp_path / "laptop", keys.generate())
    assert (public_path.name, secret_path.name) == ("laptop.key", "laptop.key_secret")
    for path in (public_path, secret_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = secret_path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        keys.write_pair(tmp_path / "laptop", keys.generate())
    assert secret_path.read_bytes() == before


def test_files_are_zeromq_certificates(tmp_path: Path) -> None:
    """pyzmq's zmq.auth reads the files perfd writes, and perfd reads them back the same."""
    pair = keys.generate()
    public_path, secret_path = keys.write_pair(tmp_path / "k", pair)
    assert zmq.auth.load_certificate(secret_path) == (pair.public, pair.secret)
    assert zmq.auth.load_certificate(public_path) == (pair.public, None)
    assert keys.read_secret_pair(secret_path) == pair
    assert keys.read_pair(public_path) == keys.KeyPair(pair.public, None)


def test_secret_key_problems_are_named(tmp_path: Path) -> None:
    """A missing file, a public-only file, a readable secret and junk each get their error."""
    public_path, secret_path = keys.write_pair(tmp_path / "k", keys.generate())
    with pytest.raises(keys.KeyFileError, match="no such key file"):
        keys.read_secret_pair(tmp_path / "missing.key_secret")
    with pytest.raises(keys.KeyFileError, match="holds only a public key"):
        keys.read_secret_pair(public_path)
    secret_path.chmod(0o644)
    with pytest.raises(keys.KeyFileError, match="mode 0644: a secret key must not be readable"):
        keys.read_secret_pair(secret_path)
    junk = tmp_path / "junk"
    junk.write_text('public-key = "short"\n')
    with pytest.raises(keys.KeyFileError, match="no valid public-key line"):
        keys.read_pair(junk)


def test_authorized_keys_lines() -> None:
    """KEY ROLE [NAME] per line; comments and blank lines are skipped; the name defaults."""
    admin, reader = keys.generate().public.decode(), keys.generate().public.decode()
    text = f"# perfd clients\n\n{admin} admin ops laptop\n  {reader}   read\n"
    parsed = keys.parse_authorized(text, "ak")
    assert parsed[admin] == keys.AuthorizedKey(admin, "admin", "ops laptop")
    assert parsed[reader] == keys.AuthorizedKey(reader, "read", reader[:8])


def test_no_valid_key_starts_with_hash_so_hash_lines_are_comments() -> None:
    """Z85 has '#', but a key starting with it decodes past 2**32: never valid, so a line
    starting with '#' is always a comment."""
    key = keys.generate().public.decode()
    assert keys.valid_key(key)
    assert not keys.valid_key("#" + key[1:])
    assert keys.parse_authorized(f"#{key[1:]} read\n", "ak") == {}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("justonefield", "expected 'KEY ROLE [NAME]'"),
        ("tooshort read", "is not a 40-character Z85 public key"),
        ("{key} owner", "role 'owner' must be read or admin"),
        ("{key} read\n{key} admin", "ak:3: key listed twice"),
    ],
)
def test_authorized_keys_errors_name_the_line(line: str, problem: str) -> None:
    """Each bad line is reported with its file and line number."""
    key = keys.generate().public.decode()
    with pytest.raises(keys.KeyFileError, match=re.escape(problem)) as info:
        keys.parse_authorized("# header\n" + line.format(key=key), "ak")
    assert str(info.value).startswith("ak:")


def test_an_empty_authorized_keys_file_is_refused(tmp_path: Path) -> None:
    """A list with no keys would let nobody in: perfd refuses it rather than serve tcp."""
    path = tmp_path / "authorized_keys"
    path.write_text("# nobody yet\n")
    with pytest.raises(keys.KeyFileError, match="lists no keys"):
        keys.read_authorized(path)


@pytest.mark.parametrize(("mode", "words"), [(0o664, "mode 0664"), (0o646, "mode 0646")])
def test_an_authorized_keys_file_others_can_write_is_refused(
    tmp_path: Path, mode: int, words: str
) -> None:
    """Like sshd's StrictModes: a list its group or others may write could let any key in."""
    path = tmp_path / "authorized_keys"
    path.write_text(f"{keys.generate().public.decode()} admin ops\n")
    path.chmod(0o644)
    assert len(keys.read_authorized(path)) == 1
    path.chmod(mode)
    with pytest.raises(
        keys.KeyFileError, match=f"{words}: writable by its group or others"
    ) as info:
        keys.read_authorized(path)
    assert str(info.value).endswith(f"chmod go-w {path}")


def test_an_authorized_keys_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    """A list owned by a user other than root and perfd's own is refused, naming the owner;
    root's and perfd's own are trusted (the check on a file's stat, for any uid)."""
    path = tmp_path / "authorized_keys"
    path.write_text("")
    st = path.stat()
    assert keys.authorized_file_problem(st, path, st.st_uid) is None
    stranger = st.st_uid + 4242
    other = os.stat_result((st.st_mode, *st[1:4], stranger, *st[5:]))
    problem = keys.authorized_file_problem(other, path, st.st_uid)
    assert problem is not None
    assert f"is owned by uid {stranger}, not by root or perfd's user" in problem
    root_owned = os.stat_result((st.st_mode, *st[1:4], 0, *st[5:]))
    assert keys.authorized_file_problem(root_owned, path, stranger) is None
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(keys.KeyFileError, match="is not a regular file"):
        keys.read_authorized(fifo)  # and no wait for a writer
