"""perfd embedded in an application: its cache, served to a real perfctl in another process."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import perfd
from perfd import config
from tests.conftest import StartPerfd, clean_env, command


def test_embedded_cache_is_served_to_perfctl(short_dir: Path) -> None:
    """An application leases a model in-process; `perfctl ps` in another process sees it."""
    cfg = config.parse(
        {
            "monitor": {"interval": "200ms", "trend_window": "5s"},
            "models": {"echo": {"target": "tests.models.toy:make_echo"}},
        }
    )
    with perfd.embed(cfg, runtime_dir=short_dir / "run") as pd:
        with pd.cache.lease("echo") as lease:
            assert lease.infer({"x": 1}) == {"x": 1}
        out = subprocess.run(
            [*command("perfctl"), "status", "--json"],
            env=clean_env(PERFD_RUNTIME_DIR=str(pd.runtime_dir)),
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["components"]["cache"] == "started"
        import perfctl

        with perfctl.Client(runtime_dir=pd.runtime_dir) as client:
            (echo,) = client.call("ps")["models"]
        assert (echo["name"], echo["misses"]) == ("echo", 1)
        assert pd.stats()["cache"]["loaded"] == 1
    assert not (short_dir / "run" / "perfd.sock").exists()


def test_embedded_without_sockets_and_import_stays_light(short_dir: Path) -> None:
    """serve=False runs the cache alone; importing perfd does not import the daemon."""
    with perfd.embed(config.Config(), serve=False, runtime_dir=short_dir / "none") as pd:
        assert pd.monitor.first_sample.is_set()
    assert not (short_dir / "none").exists()
    out = subprocess.run(
        [sys.executable, "-c", "import perfd, sys; print('perfd.daemon' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "False"


# A perfd console line: `perfd --log-format console` (perfd.log.render).
CONSOLE_LINE = (
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "  # ts
    r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) +[a-z_]+\.[a-z_.]+ "  # level, event
)
APP = """
import sys
import perfd
from perfd import config

cfg = config.parse({"models": {"echo": {"target": "tests.models.toy:make_echo"}}})
with perfd.embed(cfg, runtime_dir=sys.argv[1], serve=SERVE) as pd:
    with pd.cache.lease("echo"):
        pass
    BODY
"""


def run_app(short_dir: Path, *, before: str = "", serve: bool = False, body: str = "pass") -> str:
    """A fresh interpreter embedding perfd (``before`` runs first); its stdout."""
    code = before + APP.replace("SERVE", str(serve)).replace("BODY", body)
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code, str(short_dir / "run")],
        env=clean_env(PYTHONPATH=root),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_embedded_log_lines_are_perfds_console_format(
    start_perfd: StartPerfd, short_dir: Path
) -> None:
    """An application without a structlog configuration gets perfd's lines exactly as
    `perfd --log-format console` writes them, not structlog's default rendering."""
    daemon = start_perfd("", "--log-format", "console")
    daemon.stop()
    reference = [line for line in daemon.log_path.read_text().splitlines() if line.strip()]
    assert reference
    assert all(re.match(CONSOLE_LINE, line) for line in reference), reference
    lines = run_app(short_dir).splitlines()
    assert any(" cache.loaded " in line for line in lines), lines
    for line in lines:
        assert re.match(CONSOLE_LINE, line), line


def test_embedded_perfd_keeps_the_applications_structlog(short_dir: Path) -> None:
    """An application's own structlog configuration renders perfd's events, also after a
    reload through the served socket."""
    before = (
        "import structlog\n"
        "structlog.configure(processors=[lambda _, m, e: 'APP ' + e['event']],\n"
        "                    logger_factory=structlog.PrintLoggerFactory())\n"
    )
    body = (
        "import perfctl, structlog\n"
        "    with perfctl.Client(runtime_dir=pd.runtime_dir) as client:\n"
        "        client.call('reload')\n"
        "    structlog.get_logger().info('app.after_reload')"
    )
    lines = run_app(short_dir, before=before, serve=True, body=body).splitlines()
    assert "APP cache.loaded" in lines
    assert "APP app.after_reload" in lines, lines


def test_embedded_refusals_are_cache_errors_with_facts(short_dir: Path) -> None:
    """An application gets the cache's own exceptions, facts as attributes, no wire code."""
    from perfd.cache import errors

    cfg = config.parse(
        {
            "cache": {"ram_budget": "1MiB"},
            "models": {
                "echo": {"target": "tests.models.toy:make_echo"},
                "big": {"target": "tests.models.toy:make_echo", "size_hint": 2 << 20},
            },
        }
    )
    with perfd.embed(cfg, serve=False, runtime_dir=short_dir / "none") as pd:
        with pytest.raises(errors.UnknownModel) as unknown:
            pd.cache.lease("nope")
        assert (unknown.value.model, unknown.value.known) == ("nope", ("big", "echo"))
        assert not hasattr(unknown.value, "code")
        with pytest.raises(errors.NoCapacity) as too_big:
            pd.cache.lease("big")
        assert (too_big.value.device, too_big.value.need, too_big.value.budget) == (
            "cpu",
            2 << 20,
            1 << 20,
        )
