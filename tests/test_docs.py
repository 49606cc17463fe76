"""The docs match the program: docs/config.md's `perfd --check-config` messages are what perfd
prints for those files (regenerated here), the loader list is the registry's, and the
README's perfctl examples and paragraphs are what perfctl does."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from perfctl.format import status as fmt_status
from perfd import __version__
from perfd.loaders.registry import WIRED_BY_DAEMON, Registry
from tests.conftest import StartPerfd, clean_env, command

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CONFIG_MD = ROOT / "docs" / "config.md"
SHOWN_PATH = "/etc/perfd/perfd.toml"  # the path the examples show

# The files behind each generated region of docs/config.md: one console block per file.
EXAMPLES: dict[str, list[str]] = {
    "check-config examples": [
        "[server]\nworker = 8\n",
        '[server]\ncommand_timeout = "2 minutes"\n',
        '[log]\nlevel = "verbose"\n',
        "[server]\nworkers = 0\n",
        '[server]\nmax_message_bytes = "2GiB"\n',
        '[monitor]\ninterval = "10ms"\n',
        "[alerts.psi]\nwarm = 10\n",
    ],
    "check-config across keys": ["[alerts.host_memory]\nwarn = 90\ncrit = 85\n"],
}


# docs/config.md's "Checks across keys" table, row by row: a file that fails that check.
ACROSS_KEYS = [
    "[alerts.host_memory]\nwarn = 90\ncrit = 85\n",
    "[alerts.gpu_memory]\ncrit = 101\n",
    "[alerts.gpu_temperature]\ncrit = 151\n",
    '[alerts.exhaustion]\nwarn = "5m"\ncrit = "10m"\n',
    '[monitor]\nhistory = "1h"\ntrend_window = "2h"\n',
    '[monitor]\ninterval = "10m"\n',
    "[cache]\nlow_watermark = 95\n",
    '[models.embedder]\ntarget = "load_embedder"\n',
    '[models.ranker]\nloader = "onnx"\n',
    '[models.chat]\nloader = "llama_cpp"\n',
    '[models.ranker]\ntarget = "myapp:load"\ndevice = "gpu0"\n',
    '[providers.openrouter]\n[models.fast]\nloader = "openai"\nprovider = "openrouter"\n',
    '[models.fast]\nloader = "openai"\nprovider = "openrouter"\nmodel = "x"\n',
    '[providers.openrouter]\napi_key_env = "K"\napi_key_file = "/etc/perfd/k"\n',
    '[alerts.alertmanager]\nurl = "alertmanager:9093"\n',
    '[metrics]\nlisten = "9464"\n',
    '[metrics]\nlisten = "0.0.0.0:9464"\n',
]


def check_config(text: str, tmp_path: Path) -> tuple[int, str]:
    """`perfd --check-config` of a file holding ``text``: its exit code and its message, with
    the file's path shown as SHOWN_PATH."""
    path = tmp_path / "perfd.toml"
    path.write_text(text)
    out = subprocess.run(
        [*command("perfd"), "--check-config", str(path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, (out.stdout + out.stderr).strip().replace(str(path), SHOWN_PATH)


def region(name: str, tmp_path: Path) -> str:
    """The markdown of one generated region: each file, the check, the message, the status."""
    blocks = []
    for text in EXAMPLES[name]:
        code, message = check_config(text, tmp_path)
        blocks.append(
            "```console\n"
            f"$ cat {SHOWN_PATH}\n{text}"
            f"$ perfd --check-config {SHOWN_PATH}\n{message}\n"
            f"$ echo $?\n{code}\n"
            "```\n"
        )
    return "\n".join(blocks)


@pytest.mark.slow
def test_config_md_messages_are_perfds_own(tmp_path: Path) -> None:
    """Each `perfd --check-config` example in docs/config.md is what perfd prints for that
    file, exit status included (on a mismatch the assertion shows the region to paste)."""
    text = CONFIG_MD.read_text()
    for name in EXAMPLES:
        match = re.search(
            rf"<!-- BEGIN GENERATED: {name} -->\n(.*?)<!-- END GENERATED: {name} -->", text, re.S
        )
        assert match, f"docs/config.md lacks the {name!r} markers"
        assert match.group(1) == region(name, tmp_path), "run: python -m tests.test_docs"


@pytest.mark.slow
def test_config_md_across_keys_table_has_perfds_messages(tmp_path: Path) -> None:
    """Each row of the "Checks across keys" table shows the message perfd gives a file that
    fails that check."""
    text = CONFIG_MD.read_text()
    table = text.split("| check | message |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    shown = [row.rsplit(" | `", 1)[1].removesuffix("` |") for row in table.splitlines()]
    assert len(shown) == len(ACROSS_KEYS)
    for message, config_text in zip(shown, ACROSS_KEYS, strict=True):
        code, real = check_config(config_text, tmp_path)
        assert code == 1
        assert real == f"perfd: {SHOWN_PATH}: {message}"


@pytest.mark.slow
def test_unknown_key_suggests_the_near_miss(tmp_path: Path) -> None:
    """A typo of a key gets "did you mean" with the key it was probably meant to be."""
    code, message = check_config("[server]\nworker = 8\n", tmp_path)
    assert code == 1
    assert "server.worker: unknown key (did you mean server.workers?); allowed: " in message
    code, message = check_config("[server]\nzzz = 8\n", tmp_path)
    assert "server.zzz: unknown key; allowed: " in message


def test_loader_lists_name_every_builtin_loader() -> None:
    """The [models.NAME] loader key's doc names each built-in loader (openai too)."""
    from perfd import config

    reference = config.reference_markdown()
    (row,) = [line for line in reference.splitlines() if line.startswith("| `loader` |")]
    builtin = {*Registry(group="perfd.no-such-group").names(), *WIRED_BY_DAEMON}
    assert builtin >= {"python", "onnx", "openai"}
    for name in sorted(builtin):
        assert f"`{name}`" in row, (name, row)


def test_quick_start_says_where_perfctl_status_goes() -> None:
    """ "Then, in another shell" follows the command that starts perfd, not the test command."""
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    start, tests = quick.index(".venv/bin/perfd\n```"), quick.index("-m pytest")
    then = quick.index("in another shell")
    assert start < then < tests


def test_readme_status_example_is_perfctls_output(start_perfd: StartPerfd) -> None:
    """The README's `perfctl status` example is format_status's output for such a reply, and a
    real perfd reports the same components, in the same order."""
    example = README.split("```console\n$ perfctl status\n", 1)[1].split("```", 1)[0]
    rows = dict(line.split("  ", 1) for line in example.splitlines()[1:])
    components = dict(pair.rsplit(" ", 1) for pair in rows["components"].strip().split(", "))
    out = start_perfd().ctl("status", "--json")
    assert out.returncode == 0, out.stderr
    assert list(components) == list(json.loads(out.stdout)["components"])
    reply = {
        "version": __version__,
        "pid": 4242,
        "user": "perfd",
        "uptime_s": 2 * 3600 + 5 * 60,
        "config_path": "/etc/perfd/perfd.toml",
        "config_file_present": False,
        "runtime_dir": "/run/perfd",
        "components": components,
        "requests": {"total": 12, "errors": 0, "dropped": 0},
    }
    assert fmt_status.format_status(reply, socket="/run/perfd/perfd-ro.sock") == example.rstrip(
        "\n"
    )


def test_readme_timeout_paragraph_matches_the_client() -> None:
    """The README's --timeout paragraph gives perfctl's real waits and retry rule."""
    from perfctl.client import DEFAULT_TIMEOUT, LONG_TIMEOUT

    line = next(item for item in README.split("\n- ") if item.startswith("`--timeout`"))
    words = " ".join(line.split())
    assert f"(default {DEFAULT_TIMEOUT:g} s" in words
    assert f"{LONG_TIMEOUT:g} s for `load`, `infer` and `evict`" in words
    assert "read-only commands and `reload` are sent once more" in words
    assert "given on the command line is the wait for every command" in words


def main() -> None:
    """`python -m tests.test_docs`: rewrite docs/config.md's generated regions from perfd."""
    import tempfile

    text = CONFIG_MD.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        for name in EXAMPLES:
            begin, end = f"<!-- BEGIN GENERATED: {name} -->\n", f"<!-- END GENERATED: {name} -->"
            head, rest = text.split(begin, 1)
            text = head + begin + region(name, Path(tmp)) + end + rest.split(end, 1)[1]
    CONFIG_MD.write_text(text)


if __name__ == "__main__":
    main()
