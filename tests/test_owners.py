"""GPU process owners: cgroup paths as container runtimes and the kubelet write them, the
order of the owner chain, the bytes no process accounts for, and the process probe's cgroup
read of real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfd.engines import owners
from perfd.engines.record import EngineRecord, Reading, ServedModel, Target
from perfd.probes.processes import (
    ProcessProbe,
    parse_cgroup,
    parse_cmdline,
    parse_listening,
    parse_stat,
)
from perfd.probes.samples import GpuProcess, GpuSample, ProcessEntry

ID = "3f4e8b5f2c1d0a9e8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a"
UID = "1b3f5a7c-9d2e-4f60-8a1b-2c3d4e5f6a7b"
UID_ = UID.replace("-", "_")
NOT_PERFD = 4242  # perfd's pid in the tests where perfd holds nothing

# /proc/PID/cgroup as hosts write it: (text, parsed path, pod UID, container id, runtime, unit)
SAMPLES = {
    "docker, systemd driver, v2": (
        f"0::/system.slice/docker-{ID}.scope\n",
        f"/system.slice/docker-{ID}.scope",
        None,
        ID,
        "docker",
    ),
    "docker, cgroupfs driver, v1": (
        f"12:memory:/docker/{ID}\n4:cpu,cpuacct:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n",
        f"/docker/{ID}",
        None,
        ID,
        "docker",
    ),
    "docker, cgroupfs driver, v2": (f"0::/docker/{ID}\n", f"/docker/{ID}", None, ID, "docker"),
    "podman, rootful, systemd": (
        f"0::/machine.slice/libpod-{ID}.scope/container\n",
        f"/machine.slice/libpod-{ID}.scope/container",
        None,
        ID,
        "podman",
    ),
    "podman, rootless": (
        f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope\n",
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",
        None,
        ID,
        "podman",
    ),
    "podman, cgroupfs": (
        f"0::/libpod_parent/libpod-{ID}\n",
        f"/libpod_parent/libpod-{ID}",
        None,
        ID,
        "podman",
    ),
    "containerd, kubepods burstable, systemd": (
        "0::/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n",
        "/kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope",
        UID,
        ID,
        "containerd",
    ),
    "cri-o, kubepods besteffort, systemd": (
        "0::/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope\n",
        "/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope",
        UID,
        ID,
        "cri-o",
    ),
    "kubepods guaranteed, systemd": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n",
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope",
        UID,
        ID,
        "containerd",
    ),
    "kubepods burstable, cgroupfs, v1": (
        f"11:memory:/kubepods/burstable/pod{UID}/{ID}\n1:name=systemd:/kubepods/burstable/pod{UID}/{ID}\n",
        f"/kubepods/burstable/pod{UID}/{ID}",
        UID,
        ID,
        None,
    ),
    "kubepods guaranteed, cgroupfs, v1": (
        f"11:memory:/kubepods/pod{UID}/{ID}\n",
        f"/kubepods/pod{UID}/{ID}",
        UID,
        ID,
        None,
    ),
    "kubepods besteffort, cgroupfs, v2": (
        f"0::/kubepods/besteffort/pod{UID}/{ID}\n",
        f"/kubepods/besteffort/pod{UID}/{ID}",
        UID,
        ID,
        None,
    ),
    "podman conmon (no container)": (
        f"0::/machine.slice/libpod-conmon-{ID}.scope\n",
        f"/machine.slice/libpod-conmon-{ID}.scope",
        None,
        None,
        None,
    ),
    "a service, v1 hybrid": (
        "5:memory:/system.slice/vllm.service\n1:name=systemd:/system.slice/vllm.service\n0::/\n",
        "/system.slice/vllm.service",
        None,
        None,
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_cgroup_paths_give_pod_and_container(name: str) -> None:
    """Each runtime's cgroup path gives its pod UID (dashes restored) and container id."""
    text, path, uid, cid, runtime = SAMPLES[name]
    assert parse_cgroup(text) == path
    assert owners.pod_uid(path) == uid
    box = owners.container(path)
    assert (box.id if box else None, box.runtime if box else None) == (cid, runtime)


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/vllm.service", "vllm.service"),
        (
            "/user.slice/user-1000.slice/user@1000.service/app.slice/ollama.service",
            "ollama.service",
        ),
        ("/system.slice/run-r1b2c3.scope", None),
        ("/user.slice/user-1000.slice/session-3.scope", None),
        ("/system.slice/llama.scope", "llama.scope"),
        ("/init.scope", None),
        ("/", None),
    ],
)
def test_service_unit(path: str, unit: str | None) -> None:
    """A service, or a scope someone named; login sessions and transient runs are no owner."""
    assert owners.service_unit(path) == unit


def proc(pid: int, ppid: int, name: str, cgroup: str) -> ProcessEntry:
    return ProcessEntry(
        pid=pid, ppid=ppid, name=name, cmdline=(name,), start_ticks=1, cgroup=cgroup
    )


TABLE = {
    e.pid: e
    for e in (
        proc(1, 0, "systemd", "/init.scope"),
        proc(99, 1, "vllm", f"/system.slice/docker-{ID}.scope"),  # an engine in a container
        proc(100, 99, "VLLM::Worker", f"/system.slice/docker-{ID}.scope"),
        proc(200, 1, "perfd", "/system.slice/perfd.service"),
        proc(201, 200, "python3", "/system.slice/perfd.service"),
        proc(300, 1, "python3", f"/system.slice/docker-{ID}.scope"),
        proc(
            400,
            1,
            "python3",
            f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope",
        ),
        proc(500, 1, "python3", "/system.slice/vllm.service"),
        proc(600, 1, "python3", "/user.slice/user-1000.slice/session-3.scope"),
    )
}


def gpu(used: int, *processes: tuple[int, int | None, str | None]) -> GpuSample:
    return GpuSample(
        index=0,
        uuid="GPU-0",
        name="NVIDIA H100 80GB HBM3",
        mem_total_bytes=80 << 30,
        mem_used_bytes=used,
        mem_free_bytes=(80 << 30) - used,
        mem_reserved_bytes=0,
        utilization_percent=None,
        memory_utilization_percent=None,
        temperature_c=None,
        power_watts=None,
        power_limit_watts=None,
        persistence_mode=None,
        compute_capability=None,
        processes=tuple(GpuProcess(pid, b, n) for pid, b, n in processes),
        mig_enabled=False,
        mig=(),
    )


ENGINE = EngineRecord(
    target=Target("vllm-8000", "vllm", "http://127.0.0.1:8000", (99,), "vllm.service"),
    state="up",
    reading=Reading(models=(ServedModel("meta-llama/Llama-3.1-8B"),)),
)


def test_the_owner_chain_in_order() -> None:
    """engine (an ancestor's pid suffices, before its container) > perfd (and its children) >
    pod > container > unit > process name (also for a process that has exited)."""
    processes = [(p, 1 << 30, "python3") for p in (100, 200, 201, 300, 400, 500, 600, 700)]
    [account] = owners.attribute([gpu(9 << 30, *processes)], [ENGINE], TABLE.get, 200)
    got = {row.pid: row.owner for row in account.processes}
    assert got[100] == owners.Owner(
        "engine", "vllm-8000", "vllm-8000", "vllm", "meta-llama/Llama-3.1-8B", "vllm.service"
    )
    assert got[200] == got[201] == owners.Owner("perfd", "perfd")
    assert got[300] == owners.Owner(
        "container", f"docker {ID[:12]}", container=ID, runtime="docker"
    )
    assert got[400] == owners.Owner("pod", UID, container=ID, runtime="containerd", pod_uid=UID)
    assert got[500] == owners.Owner("unit", "vllm.service", unit="vllm.service")
    assert got[600] == owners.Owner("process", "python3")
    assert got[700] == owners.Owner("process", "python3")  # gone: NVML's name is left


def test_a_target_without_a_record_owns_too() -> None:
    """A bare Target (no reading yet) owns its pids, without a model."""
    target = ENGINE.target
    [account] = owners.attribute(
        [gpu(1 << 30, (100, 1 << 30, None))], [target], TABLE.get, NOT_PERFD
    )
    assert account.processes[0].owner.engine == "vllm-8000"
    assert account.processes[0].owner.model is None
    assert account.processes[0].name == "VLLM::Worker"  # no NVML name: the process's own


def test_unaccounted_bytes() -> None:
    """used minus the processes' sum; never negative; None with the pid when one is unknown."""
    [a] = owners.attribute(
        [gpu(10 << 30, (500, 3 << 30, "x"), (600, 4 << 30, "y"))], [], TABLE.get, 1
    )
    assert (a.processes_bytes, a.unaccounted_bytes, a.unaccounted_reason) == (
        7 << 30,
        3 << 30,
        None,
    )
    [b] = owners.attribute([gpu(1 << 30, (500, 3 << 30, "x"))], [], TABLE.get, NOT_PERFD)
    assert b.unaccounted_bytes == 0
    [c] = owners.attribute(
        [gpu(10 << 30, (500, 3 << 30, "x"), (600, None, "y"))], [], TABLE.get, NOT_PERFD
    )
    assert c.processes_bytes is None
    assert c.unaccounted_bytes is None
    assert c.unaccounted_reason is not None
    assert "pid 600" in c.unaccounted_reason
    [d] = owners.attribute([gpu(5 << 30)], [], TABLE.get, NOT_PERFD)
    assert d.unaccounted_bytes == 5 << 30  # no process at all: everything is unaccounted


def test_labels_follow_dcgm_names() -> None:
    """GPU labels are DCGM exporter's gpu, UUID, modelName; every owner label is present."""
    [a] = owners.attribute([gpu(2 << 30, (400, 1 << 30, "python3"))], [], TABLE.get, NOT_PERFD)
    assert owners.gpu_labels(a) == {
        "gpu": "0",
        "UUID": "GPU-0",
        "modelName": "NVIDIA H100 80GB HBM3",
    }
    labels = owners.owner_labels(a.processes[0])
    assert tuple(labels) == owners.OWNER_LABELS
    assert labels["pod_uid"] == UID
    assert labels["container_id"] == ID
    assert labels["owner_kind"] == "pod"
    assert labels["engine"] == ""
    assert labels["pid"] == "400"


# --- the probe's cgroup read -----------------------------------------------------------------


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    process.kill()
    process.wait(timeout=10)


def test_the_probe_reads_a_real_childs_cgroup(child: subprocess.Popen[bytes]) -> None:
    """The probe's cgroup of a real child is one of the paths /proc/PID/cgroup lists (the
    most specific: not "/" when one says more), its parent is this process, and an exited
    process is None."""
    text = Path(f"/proc/{child.pid}/cgroup").read_text()
    paths = [line.split(":", 2)[2] for line in text.splitlines()]
    entry = ProcessProbe().process(child.pid)
    assert entry is not None
    assert entry.ppid == int(Path("/proc/self/stat").read_text().split()[0])
    assert entry.cgroup in paths
    if any(p != "/" for p in paths):
        assert entry.cgroup != "/"
    child.kill()
    child.wait(timeout=10)
    assert ProcessProbe().process(child.pid) is None


def fake_process(root: Path, pid: int, start: int, cgroup: str) -> None:
    folder = root / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    fields = ["S", "1", *["0"] * 17, str(start), "0"]  # state, ppid, ..., starttime (22)
    (folder / "stat").write_text(f"{pid} (py (x) y) {' '.join(fields)}\n")
    (folder / "cmdline").write_bytes(b"python3\0-m\0vllm.entrypoints.openai.api_server\0")
    (folder / "cgroup").write_text(cgroup)


def test_the_cgroup_is_cached_by_pid_and_start_time(tmp_path: Path) -> None:
    """The cgroup is read once per (pid, start time): a changed file is not re-read for the
    same process, and is for a new process with the same pid."""
    fake_process(tmp_path, 42, 1000, "0::/system.slice/a.service\n")
    probe = ProcessProbe(proc=str(tmp_path))
    first = probe.process(42)
    assert first is not None
    assert (first.name, first.ppid, first.start_ticks) == ("py (x) y", 1, 1000)
    assert (first.cgroup, first.unit) == ("/system.slice/a.service", "a.service")
    assert first.cmdline == ("python3", "-m", "vllm.entrypoints.openai.api_server")
    fake_process(tmp_path, 42, 1000, "0::/system.slice/b.service\n")
    cached = probe.process(42)
    assert cached is not None
    assert cached.unit == "a.service"
    fake_process(tmp_path, 42, 2000, "0::/system.slice/b.service\n")  # the pid was reused
    reused = probe.process(42)
    assert reused is not None
    assert reused.unit == "b.service"
    assert [e.pid for e in probe.scan()] == [42]


def test_perfd_as_pid_1_owns_only_itself() -> None:
    """perfd as pid 1 (a container's init) is every process's ancestor: only its own pid is
    perfd's then, the others keep their owners."""
    [account] = owners.attribute(
        [gpu(2 << 30, (1, 1 << 30, None), (500, 1 << 30, None))], [], TABLE.get, 1
    )
    assert [row.owner.kind for row in account.processes] == ["perfd", "unit"]


@given(st.text(max_size=300))
def test_proc_parsers_never_raise_on_garbage(text: str) -> None:
    """Whatever /proc holds (torn reads, odd names), the parsers give a value or None."""
    parse_cgroup(text)
    parse_stat(text)
    parse_listening(text)
    parse_cmdline(text.encode("utf-8", "replace"))
    owners.pod_uid(text)
    owners.container(text)
    owners.service_unit(text)
