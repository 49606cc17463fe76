"""From a request's model, config.json or weights file to the ``Model`` the plan sizes.

- A catalog name: its config and the computed parameter counts.
- A config.json: the same, from the user's file.
- A GGUF file: the architecture from its metadata, exact bytes and parameters from its
  tensor infos.
- A safetensors file or directory: exact bytes and parameters from the headers; the
  architecture from ``--config``, a config.json beside the weights, or ``--model``.
  Packed quantized checkpoints (a ``quantization_config``: GPTQ, AWQ...) store several weights
  per element, so their parameter counts come from the config instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from perfd.recommend.arch import (
    ModelShape,
    active_params,
    kv_elements_per_layer,
    layer_groups,
    param_groups,
    spec_from_config,
)
from perfd.recommend.catalog import MODELS, model_spec
from perfd.recommend.plan import Model
from perfd.recommend.precision import KvFormat, WeightFormat, weight_format
from perfd.recommend.request import Query, RecommendError


def _load_config(path: str) -> dict[str, Any]:
    import json

    where = Path(path).expanduser()
    if where.is_dir():
        where = where / "config.json"
    try:
        data = json.loads(where.read_text())
    except OSError as exc:
        raise RecommendError(
            f"{where}: {exc.strerror or exc}", option="config_json", value=path
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecommendError(
            f"{where}: not valid JSON ({exc})", option="config_json", value=path
        ) from None
    if not isinstance(data, dict):
        raise RecommendError(f"{where}: not a JSON object", option="config_json", value=path)
    return data


def _config_name(config: Mapping[str, Any], path: str) -> str:
    named = config.get("_name_or_path")
    if isinstance(named, str) and named:
        return named.rstrip("/").split("/")[-1]
    where = Path(path)
    return where.parent.name if where.name == "config.json" and where.parent.name else where.stem


def resolve_model(request: Query) -> Model:
    """The Model a request names; RecommendError for unknown names and unreadable files."""
    config: dict[str, Any] | None = None
    where = request.config_json
    if request.config_json is not None:
        config = _load_config(request.config_json)
    elif request.config is not None:  # the contents, sent over the socket by perfctl
        config, where = dict(request.config), request.model or "config.json"
    if request.weights_path is None:
        if config is not None:
            name = request.model if request.config is not None and request.model else None
            name = name or _config_name(config, where or "")
            spec = spec_from_config(config, name=name, source=f"config.json: {where}")
        else:
            spec = model_spec(request.model or "")
        return Model(spec, param_groups(spec), weight_format(spec.dtype))
    from perfd.recommend.weights import config_from_gguf, read_weights

    info = read_weights(request.weights_path)
    source = f"{info.kind}: {request.weights_path}"
    if request.model is not None and config is None:
        spec = model_spec(request.model)
    elif info.kind == "gguf" and config is None:
        config = config_from_gguf(info)
        named = info.metadata.get("general.name")
        name = named if isinstance(named, str) and named else Path(info.path).stem
        spec = spec_from_config(config, name=name, source=source)
    else:
        config = config if config is not None else info.config
        if config is None:
            raise RecommendError(
                f"{request.weights_path}: safetensors headers give sizes, not the architecture; "
                "put its config.json beside it, or name the model (perfctl recommend MODEL "
                "--weights PATH) or give its config (--config-json PATH)",
                option="weights_path",
                value=request.weights_path,
            )
        name = _config_name(config, str(Path(info.path) / "config.json"))
        spec = spec_from_config(config, name=name, source=source)
    groups = info.groups
    if info.groups.total == 0 or (config is not None and "quantization_config" in config):
        groups = param_groups(spec)
    bits = 8 * info.bytes / max(1, groups.total)
    native = WeightFormat(f"{info.kind} file", bits, bits, bits, info.kind == "gguf")
    return Model(spec, groups, native, info)


def kv_bytes(spec: ModelShape, context: int, kv: KvFormat) -> int:
    """KV cache bytes of one sequence of ``context`` tokens, all layers, no block rounding."""
    per_layer = kv.bytes_for(kv_elements_per_layer(spec))
    return sum(
        layers * per_layer * (context if window is None else min(context, window))
        for layers, window in layer_groups(spec)
    )


def model_summary(model: Model) -> dict[str, Any]:
    spec = model.spec
    summary: dict[str, Any] = {
        "name": spec.name,
        "hf_id": spec.hf_id,
        "source": spec.source,
        "model_type": spec.model_type,
        "params": model.groups.total,
        "active_params": active_params(spec, model.groups),
        "layers": spec.layers,
        "hidden_size": spec.hidden,
        "attention_heads": spec.heads,
        "kv_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "attention": spec.attention,
        "sliding_window": spec.sliding_window,
        "windowed_layers": spec.windowed_layers,
        "max_position_embeddings": spec.max_position,
        "vocab_size": spec.vocab,
        "tie_word_embeddings": spec.tied,
        "dtype": spec.dtype,
    }
    if spec.moe is not None:
        summary["moe"] = {"experts": spec.moe.experts, "experts_per_token": spec.moe.top_k}
    if spec.mla is not None:
        summary["mla"] = {
            "kv_lora_rank": spec.mla.kv_lora_rank,
            "qk_rope_head_dim": spec.mla.qk_rope_head_dim,
        }
    if model.file is not None:
        summary["file"] = {
            "kind": model.file.kind,
            "files": model.file.files,
            "tensors": model.file.tensors,
            "bytes": model.file.bytes,
            "dtypes": model.file.dtypes,
        }
    return summary


def list_models() -> list[dict[str, Any]]:
    """The built-in model catalog, one summary per model."""
    rows = []
    for name, hf_id, aliases, _ in MODELS:
        spec = model_spec(name)
        groups = param_groups(spec)
        rows.append(
            {
                "name": name,
                "hf_id": hf_id,
                "aliases": list(aliases),
                "params": groups.total,
                "active_params": active_params(spec, groups),
                "layers": spec.layers,
                "kv_heads": spec.kv_heads,
                "head_dim": spec.head_dim,
                "max_context": spec.max_position,
                "attention": spec.attention,
                "sliding_window": spec.sliding_window,
                "dtype": spec.dtype,
            }
        )
    return rows
