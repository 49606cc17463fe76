"""llama.cpp's own log, caught through llama_cpp's log callback instead of going to stderr.

llama.cpp logs from the thread that calls it; a load runs on one thread, so the lines a load
logs are collected per thread (``Capture``) and read afterwards for the engine's own figures
(``EngineFigures``: the KV cache size line, model and compute buffer sizes) and, when the load
fails, for its error lines (llama-cpp-python's exception only says "Failed to load model").
Lines logged outside a capture (a request's timings) are dropped, except warnings and errors,
which go to perfd's log as ``llama_cpp.log``.

These figures are the engine's, reported beside perfd's own (computed from the GGUF header by
perfd.loaders.llama_memory) and never in their place. One callback serves the whole process;
it is installed once, the first time a model loads, and replaces llama_cpp's own (which prints
to stderr).
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from perfd import log

MIB = 1 << 20
MAX_LINES = 2000  # lines kept per capture: a load logs a few hundred
MAX_LINE = 500  # characters kept of one line
WARN, ERROR = 3, 4  # ggml_log_level (ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4)
CONT = 5  # a continuation of the previous line
_KV_SIZE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells")
_BUFFER = re.compile(r"(\w+): +(\S+) +(model|KV|compute|output) buffer size = +([\d.]+) MiB")

_local = threading.local()
_installed: list[Any] = []  # the ctypes callback, kept alive for as long as the process lives
_install_lock = threading.Lock()


@dataclass
class EngineFigures:
    """What llama.cpp's log said about one load; sizes in bytes (from MiB with 2 decimals)."""

    kv_cache_bytes: int | None = None
    kv_cells: int | None = None
    model_buffers: dict[str, int] = field(default_factory=dict)  # "CPU_Mapped" -> bytes
    kv_buffers: dict[str, int] = field(default_factory=dict)
    compute_buffers: dict[str, int] = field(default_factory=dict)


@dataclass
class Capture:
    """The lines llama.cpp logged on this thread while the capture was open."""

    lines: list[tuple[int, str]] = field(default_factory=list)
    partial: str = ""
    level: int = 0

    def add(self, level: int, text: str) -> None:
        if level != CONT:
            self.level = level
        self.partial += text
        while "\n" in self.partial:
            line, self.partial = self.partial.split("\n", 1)
            if len(self.lines) < MAX_LINES:
                self.lines.append((self.level, line[:MAX_LINE]))

    def errors(self, limit: int = 5) -> list[str]:
        """The last error lines (the reason a load failed), stripped."""
        found = [line.strip() for level, line in self.lines if level == ERROR and line.strip()]
        return found[-limit:]

    def figures(self) -> EngineFigures:
        return parse_figures(line for _, line in self.lines)


def parse_figures(lines: Iterator[str] | list[str]) -> EngineFigures:
    """The engine's figures in llama.cpp's log lines."""
    figures = EngineFigures()
    for line in lines:
        kv = _KV_SIZE.search(line)
        if kv:
            figures.kv_cache_bytes = round(float(kv.group(1)) * MIB)
            figures.kv_cells = int(kv.group(2))
            continue
        buffer = _BUFFER.search(line)
        if buffer:
            _, name, kind, mib = buffer.groups()
            table = {
                "model": figures.model_buffers,
                "KV": figures.kv_buffers,
                "compute": figures.compute_buffers,
            }.get(kind)
            if table is not None:
                table[name] = table.get(name, 0) + round(float(mib) * MIB)
    return figures


@contextmanager
def capture(llama_cpp: Any) -> Iterator[Capture]:
    """Collect what llama.cpp logs on this thread inside the ``with`` block."""
    install(llama_cpp)
    held = Capture()
    outer = getattr(_local, "capture", None)
    _local.capture = held
    try:
        yield held
    finally:
        _local.capture = outer


def install(llama_cpp: Any) -> None:
    """Route llama.cpp's log to ``_on_log`` (once per process)."""
    with _install_lock:
        if _installed:
            return
        callback = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
        _installed.append(callback)


def _on_log(level: int, text: bytes, user_data: Any) -> None:
    try:
        line = text.decode("utf-8", "replace") if text else ""
        held: Capture | None = getattr(_local, "capture", None)
        if held is not None:
            held.add(level, line)
        elif level in (ERROR, WARN) and line.strip():
            log.get("perfd.loaders.llama").warning(
                "llama_cpp.log", level="error" if level == ERROR else "warning",
                text=line.strip()[:MAX_LINE],
            )  # fmt: skip
    except Exception:  # never raise into C
        return
