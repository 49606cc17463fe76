"""This process's memory: measuring it, and giving it back after a model is unloaded.

Standard library only (psutil stays in perfd.probes): RSS comes from /proc/self/statm, its
anonymous and file-backed parts from /proc/self/status. The
cache reads memory through a ``Meter`` passed to it (``ProcessMeter`` in perfd, a fake in
tests), never through this module's functions directly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

GpuUse = Callable[[str], int | None]  # "cuda:N" -> this process's memory there, from NVML


class RssParts(NamedTuple):
    """The kinds of resident memory (/proc/self/status): anonymous pages (heaps, tensors
    allocated by the process) and file-backed ones (code, mmapped model files)."""

    anon: int
    file: int


class Meter(Protocol):
    """What the cache measures a load and an unload with."""

    def rss_bytes(self) -> int:
        """This process's resident set size."""
        ...

    def rss_parts(self) -> RssParts | None:
        """RssAnon and RssFile; None when the kernel does not say."""
        ...

    def cuda_bytes(self, device: str) -> int | None:
        """What torch has allocated on a "cuda:N" device; None when unknown."""
        ...

    def gpu_bytes(self, device: str) -> int | None:
        """This process's memory on a "cuda:N" device as NVML shows it; None when unknown."""
        ...

    def release(self) -> None:
        """Give freed memory back (gc, torch's CUDA cache, malloc_trim)."""
        ...


class ProcessMeter:
    """The real meter: this process's RSS and torch's CUDA count, NVML's per-process use
    through ``gpu_use`` (the monitor's fresh NVML read), and a real release."""

    def __init__(self, gpu_use: GpuUse | None = None) -> None:
        self._gpu_use = gpu_use

    def rss_bytes(self) -> int:
        return rss_bytes()

    def rss_parts(self) -> RssParts | None:
        return rss_parts()

    def cuda_bytes(self, device: str) -> int | None:
        return cuda_allocated(device)

    def gpu_bytes(self, device: str) -> int | None:
        if self._gpu_use is None or not device.startswith("cuda:"):
            return None
        return self._gpu_use(device)

    def release(self) -> None:
        release()


_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc: Any = None


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * _PAGE


def rss_parts(status: str = "/proc/self/status") -> RssParts | None:
    """RssAnon and RssFile of this process (Linux 4.5 and later), in bytes."""
    found: dict[str, int] = {}
    try:
        with open(status, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("RssAnon", "RssFile"):
                    found[key] = int(value.split()[0]) * 1024  # "RssAnon:  1234 kB"
    except (OSError, ValueError, IndexError):
        return None
    if len(found) != 2:
        return None
    return RssParts(found["RssAnon"], found["RssFile"])


def cuda_allocated(device: str) -> int | None:
    """Bytes torch has allocated on a cuda:N device, when torch is already imported."""
    torch = sys.modules.get("torch")
    if torch is None or not device.startswith("cuda:"):
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return int(torch.cuda.memory_allocated(int(device.split(":")[1])))
    except Exception:
        return None


def release() -> None:
    """Collect garbage, empty torch's CUDA cache when torch is in use, and return freed heap
    pages to the kernel (glibc malloc_trim), so an unload shows up in RSS and nvidia-smi."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


MMAP_THRESHOLD = 128 * 1024  # glibc's initial value
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep glibc's mmap threshold at ``threshold``; True when set (glibc only).

    glibc raises the threshold each time a big mmapped block is freed (up to 32 MiB), after
    which big blocks, such as request frames of up to 1 MiB (256 MiB for arrays), come from
    the heap arenas of perfd's threads and fragment them: over 100,000 mixed requests RSS grew
    by 8-12 MiB while Python's own allocations stayed flat. A fixed threshold (which also
    turns the raising off) gives every big block back to the kernel when it is freed.
    """
    mallopt = _libc_function("mallopt")
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) if mallopt is not None else False


def _malloc_trim() -> Any:
    return _libc_function("malloc_trim")


def _libc_function(name: str) -> Any:
    global _libc
    if _libc is None:
        library = ctypes.util.find_library("c") or "libc.so.6"
        try:
            _libc = ctypes.CDLL(library)
        except OSError:
            _libc = False
    return getattr(_libc, name, None) if _libc else None
