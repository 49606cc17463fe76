"""perfd embedded in an application: its cache, served to a real perfctl in another process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import perfd
from perfd import config
from tests.conftest import clean_env, command


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
