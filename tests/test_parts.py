"""The composition root (perfd.parts), in process: every part built at start from the config
and the injected boundaries, the cache and providers reported not_started until first used,
one ordered close."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from perfd import config
from perfd.parts import Boundaries, Parts
from perfd.systemd import Liveness, Notifier
from tests.fakeprobes import FakeGpuProbe, FakeHostProbe, gpu_sample, host_sample

ROOT = Path(__file__).resolve().parent.parent
MODELS = '[models.echo]\ntarget = "tests.models.toy:make_echo"\n'


def keeper_running() -> bool:
    return any(t.name == "perfd-keeper" and t.is_alive() for t in threading.enumerate())


@pytest.fixture
def fakes() -> tuple[FakeHostProbe, FakeGpuProbe]:
    return FakeHostProbe(host_sample()), FakeGpuProbe(gpu_sample(0, used_percent=40.0))


@pytest.fixture
def parts(
    tmp_path: Path, short_dir: Path, fakes: tuple[FakeHostProbe, FakeGpuProbe]
) -> Iterator[tuple[Parts, Liveness]]:
    path = tmp_path / "perfd.toml"
    path.write_text(MODELS)
    host, gpu = fakes
    liveness = Liveness()
    built = Parts(
        config.load(str(path)),
        runtime_dir=short_dir / "run",
        config_arg=str(path),
        notifier=Notifier(enabled=False),
        liveness=liveness,
        boundaries=Boundaries(host_probe=lambda _cfg: host, gpu_probe=lambda _cfg: gpu),
    )
    yield built, liveness
    built.close()


def test_parts_are_built_at_start_and_started_on_first_use(
    parts: tuple[Parts, Liveness], fakes: tuple[FakeHostProbe, FakeGpuProbe]
) -> None:
    """start() and start_models() build the monitor over the injected probes, the providers
    and the cache before any request; the cache stays not_started (no housekeeping thread, no
    heartbeat) until first used, which logs component.started once; close() stops it all."""
    built, liveness = parts
    host, gpu = fakes
    built.start(bind=False)
    built.start_models()
    assert built.monitor is not None
    snapshot = built.monitor.snapshot()
    assert snapshot is not None
    assert [g.name for g in snapshot.gpus] == [gpu.gpus[0].name]  # the injected probe
    assert host.calls  # ...and the injected host probe
    components = built.components()
    assert (components["cache"], components["providers"]) == ("not_started", "not_started")
    assert components["engines"] == "started"  # its thread, after READY, like the models'
    assert liveness.stale(-1) == ["engines", "monitor"]
    assert not keeper_running()

    with capture_logs() as logs:
        built.cache.load("echo")
        built.cache.load("echo")
    started = [e for e in logs if e["event"] == "component.started"]
    assert started == [
        {
            "event": "component.started",
            "component": "cache",
            "models": ["echo"],
            "log_level": "info",
        }
    ]
    assert built.components()["cache"] == "started"
    assert built.components()["providers"] == "not_started"  # no remote model used one
    assert liveness.stale(-1) == ["engines", "keeper", "monitor"]
    assert keeper_running()

    built.close()
    assert not keeper_running()
    assert "perfd-engines" not in {t.name for t in threading.enumerate()}
    assert gpu.closed
    assert built.components()["metrics"] == "off"


def test_reload_reaches_a_cache_not_yet_used(parts: tuple[Parts, Liveness], tmp_path: Path) -> None:
    """A reload before the cache's first use reconfigures the cache built at start: the model
    added by the reload loads."""
    built, _ = parts
    built.start(bind=False)
    built.start_models()
    (tmp_path / "perfd.toml").write_text(MODELS + MODELS.replace("echo]", "echo2]"))
    reply = built.reload()
    assert reply["changed"] == ["models.echo2"]
    assert built.components()["cache"] == "not_started"
    built.cache.load("echo2")
    assert built.cache.loaded_names() == ["echo2"]


def test_starting_the_parts_imports_nothing_heavy(short_dir: Path, tmp_path: Path) -> None:
    """Building every part (cache, loaders and providers included) imports neither numpy,
    onnxruntime nor requests: they load with a model or a provider's first call."""
    path = tmp_path / "perfd.toml"
    path.write_text(MODELS + "[monitor]\ngpu = false\n")
    code = f"""
import json, sys
from pathlib import Path
from perfd import config
from perfd.parts import Parts
from perfd.systemd import Liveness, Notifier
parts = Parts(config.load({str(path)!r}), runtime_dir=Path({str(short_dir / "run")!r}),
              notifier=Notifier(enabled=False), liveness=Liveness())
parts.start(bind=False)
parts.start_models()
loaded = sorted({{m.split(".")[0] for m in sys.modules}})
parts.close()
print("loaded:", json.dumps(loaded))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    # perfd's own log lines share stdout (written by its log thread, in any order)
    answer = [line for line in out.stdout.splitlines() if line.startswith("loaded: ")]
    assert len(answer) == 1, out.stdout
    loaded = set(json.loads(answer[0].removeprefix("loaded: ")))
    assert not loaded & {"numpy", "onnxruntime", "requests", "prometheus_client"}
    assert {"perfd", "psutil"} <= loaded  # the parts did start: the host probe's psutil


def test_launcher_splits_its_options_from_perfds() -> None:
    """tests/launcher.py takes its own options before ``--`` and hands perfd the rest."""
    from tests import launcher

    args, rest = launcher.parse(["--nvml-control", "/x.json", "--", "--config", "c.toml"])
    assert (args.nvml_control, args.nvml_retry, rest) == ("/x.json", 0.2, ["--config", "c.toml"])
    with pytest.raises(SystemExit):
        launcher.parse(["--nvml-control", "/x.json"])  # no "--": perfd's arguments are missing
