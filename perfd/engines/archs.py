"""The architecture of the model an engine serves, where this host can read it: what the plan
check (perfd.engines.plancheck) needs.

- **llama-server**: the GGUF file its ``/props`` ``model_path`` names (the record's model
  ``path``). A relative path is resolved through the working directory of the engine's
  processes (``/proc/PID/cwd``), an absolute one that is not here through their root
  (``/proc/PID/root``, an engine in a container). The header is read with perfd's GGUF reader
  (perfd.recommend.llama_memory), bounded by its counts.
- **vLLM, SGLang**: ``config.json`` in the model root (``/v1/models``' ``root``, SGLang's
  ``model_path``) when that is a local directory (at most 4 MiB).
- **Ollama**: the ``/api/show`` facts the reader kept (``ServedModel.architecture``), as a
  config and as llama.cpp's facts (Ollama runs llama.cpp's KV cache).

``resolve(record)`` gives an ``Arch`` or the reason there is none; it never raises. A file's
result is cached per (path, mtime, size), so a file is read again only when it changes.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Final

from perfd.engines.plancheck import Arch
from perfd.engines.record import LLAMACPP, OLLAMA, EngineRecord, ServedModel
from perfd.recommend.llama_memory import GgufFacts, read_facts
from perfd.recommend.request import Query

MAX_CONFIG: Final = 4 << 20  # a config.json larger than this is not one
MAX_CACHED: Final = 64
_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str, int, int], Arch | str] = OrderedDict()


def resolve(record: EngineRecord) -> Arch | str:
    """The architecture of the engine's (first) model, or why it cannot be read here."""
    reading = record.reading
    if reading is None or not reading.models:
        return "no model read from the engine yet"
    model = reading.models[0]
    try:
        if record.target.kind == LLAMACPP:
            return _llamacpp(model, record.target.pids)
        if record.target.kind == OLLAMA:
            return _ollama(model)
        return _config_dir(model, record.target.pids)
    except Exception as exc:  # advisory: a bug here must not cost the record
        return f"reading the architecture failed: {type(exc).__name__}: {exc}"


def _llamacpp(model: ServedModel, pids: tuple[int, ...]) -> Arch | str:
    if not model.path:
        return "llama-server's /props names no model_path"
    found = _local(model.path, pids)
    if isinstance(found, str):
        return found
    return _cached("gguf", found, lambda: _gguf(found, model.name))


def _gguf(path: Path, name: str) -> Arch | str:
    try:
        facts = read_facts(str(path), name)
    except Exception as exc:  # RecommendError says what is wrong with the file
        return f"{path}: {exc}"
    return Arch(Query(weights_path=str(path)), facts)


def _config_dir(model: ServedModel, pids: tuple[int, ...]) -> Arch | str:
    if not model.path:
        return f"the engine names no local path for {model.name!r}"
    found = _local(str(Path(model.path) / "config.json"), pids)
    if isinstance(found, str):
        return f"{found} (the model root is not a local directory with a config.json)"
    return _cached("config", found, lambda: _config(found))


def _config(path: Path) -> Arch | str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG + 1)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if len(data) > MAX_CONFIG:
        return f"{path}: over {MAX_CONFIG} bytes, not a config.json"
    try:
        doc = json.loads(data)
    except ValueError as exc:
        return f"{path}: not JSON ({exc})"
    if not isinstance(doc, dict):
        return f"{path}: not a JSON object"
    return Arch(Query(config=doc))


def _ollama(model: ServedModel) -> Arch | str:
    facts = model.architecture
    if not facts:
        return f"Ollama's /api/show gave no architecture for {model.name!r}"
    arch = str(facts.get("architecture") or "")
    layers = _count(facts.get("block_count"))
    heads = _first(facts.get("head_count"))
    embd = _count(facts.get("embedding_length"))
    if not (arch and layers and heads and embd):
        return f"{model.name}: /api/show lacks block_count, head_count or embedding_length"
    kv = facts.get("head_count_kv", heads)
    kv_heads = kv[:layers] if isinstance(kv, list) else [kv] * layers
    head_k = _count(facts.get("key_length")) or embd // heads
    head_v = _count(facts.get("value_length")) or embd // heads
    trained = _count(facts.get("context_length")) or 0
    config: dict[str, Any] = {
        "model_type": arch,
        "num_hidden_layers": layers,
        "hidden_size": embd,
        "num_attention_heads": heads,
        "num_key_value_heads": max((_count(h) or 0) for h in kv_heads),
        "head_dim": head_k,
        "max_position_embeddings": trained,
        "torch_dtype": "float16",
    }
    for key, name in (("vocab_size", "vocab_size"), ("feed_forward_length", "intermediate_size")):
        if _count(facts.get(key)):
            config[name] = facts[key]
    gguf = GgufFacts(
        path=f"ollama:{model.name}",
        arch=arch,
        n_layer=layers,
        n_ctx_train=trained,
        k_widths=tuple((_count(h) or 0) * head_k for h in kv_heads),
        v_widths=tuple((_count(h) or 0) * head_v for h in kv_heads),
        sizes={},
    )
    return Arch(Query(config=config), gguf)


def _local(path: str, pids: tuple[int, ...]) -> Path | str:
    """The file ``path`` names, as the engine's processes see it: relative ones from their
    working directory, absolute ones not here from their root."""
    given = Path(path)
    if given.is_absolute() and given.is_file():
        return given
    link = "root" if given.is_absolute() else "cwd"
    tried = []
    for pid in pids:
        base = f"/proc/{pid}/{link}"
        candidate = Path(base) / path.lstrip("/")
        try:
            if candidate.is_file():
                shown = Path(os.readlink(base)) / path.lstrip("/")
                return shown if shown.is_file() else candidate
            tried.append(f"not in {base}")
        except OSError as exc:  # another user's process: no access to its cwd or root
            tried.append(f"{base}: {exc.strerror or exc}")
    if given.is_absolute():
        return f"{path}: no such file on this host" + (f" ({'; '.join(tried)})" if tried else "")
    if not pids:
        return f"{path} is relative and the engine's processes are not known"
    return f"{path} is relative: {'; '.join(tried)}"


def _cached(what: str, path: Path, load: Any) -> Arch | str:
    try:
        stat = path.stat()
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    key = (what, str(path), stat.st_mtime_ns, stat.st_size)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    result: Arch | str = load()
    with _lock:
        _cache[key] = result
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return result


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _first(value: Any) -> int | None:
    return _count(value[0] if isinstance(value, list) and value else value)


__all__ = ["resolve"]
