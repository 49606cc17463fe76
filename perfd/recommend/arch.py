"""A model's shape (``ModelShape``) from a Hugging Face config.json, and what follows from it:
parameter counts by kind and KV cache elements per token, per layer kind.

Parameter counts are exact for the architectures below (they match the published totals):
embeddings (+ learned positions for GPT-2 and OPT) + per layer q/k/v/o (+ q/k/v biases for
Qwen2, + every linear bias for GPT-2 and OPT; MLA projections for DeepSeek-V2/V3) + the MLP
(gated: 3 matrices; GPT-2/OPT: 2 matrices with biases; MoE: every expert, the router and any
shared experts) + norms (2 per layer, 4 for Gemma-2/3; LayerNorms have a bias) + final norm +
lm_head unless tied. Phi-3's fused qkv and gate_up hold the same numbers of weights.

KV cache per token and layer: 2 (K and V) x kv_heads x head_dim elements, with an explicit
``head_dim`` when the config has one (Gemma-2: 256, not hidden/heads = 224). MLA (DeepSeek-V2)
caches one latent of kv_lora_rank + qk_rope_head_dim elements per layer, no factor 2, as
vLLM's MLAAttentionSpec does. Sliding-window layers hold at most ``sliding_window`` tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from perfd.recommend.bounds import (
    config_int,
    config_list,
    config_text,
    layer_indexes,
    multiples_below,
)
from perfd.recommend.precision import ParamGroups
from perfd.recommend.request import MAX_NAME, RecommendError, shown

_LAYERNORM_TYPES = frozenset({"gpt2", "opt", "phi", "falcon", "gpt_neox", "gptj", "bloom"})
_LINEAR_BIAS_TYPES = frozenset({"gpt2", "opt"})
_QKV_BIAS_TYPES = frozenset({"qwen2", "qwen2_moe"})
_QK_NORM_TYPES = frozenset({"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"})
_FOUR_NORM_TYPES = frozenset({"gemma2", "gemma3", "gemma3_text"})
_TIED_BY_DEFAULT = frozenset({"gpt2", "opt", "gemma", "gemma2", "gemma3", "gemma3_text"})
_SLIDING_ALL_LAYERS = frozenset({"mistral", "mixtral", "starcoder2"})
_MLA_TYPES = frozenset({"deepseek_v2", "deepseek_v3", "kimi_k2"})
KNOWN_TYPES = (
    frozenset({"llama", "phi3", "qwen3", "gemma", "deepseek"})
    | _LAYERNORM_TYPES
    | _QKV_BIAS_TYPES
    | _QK_NORM_TYPES
    | _FOUR_NORM_TYPES
    | _SLIDING_ALL_LAYERS
    | _MLA_TYPES
)


@dataclass(frozen=True)
class Moe:
    experts: int
    top_k: int
    expert_intermediate: int
    moe_layers: int  # layers with experts (the others have a dense MLP)
    shared_intermediate: int = 0  # the shared experts' MLP width, all of them together
    shared_gate: bool = False  # Qwen2-MoE: a hidden x 1 gate on the shared expert
    score_bias: bool = False  # DeepSeek-V3: e_score_correction_bias per MoE layer


@dataclass(frozen=True)
class Mla:
    kv_lora_rank: int
    q_lora_rank: int | None
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class ModelShape:
    """The shape of a decoder-only transformer, enough for its memory."""

    name: str
    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    max_position: int
    tied: bool = False
    dtype: str = "bf16"
    qkv_bias: bool = False
    linear_bias: bool = False  # every linear layer has a bias (GPT-2, OPT)
    gated_mlp: bool = True
    norm_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    learned_positions: int = 0
    embed_dim: int = 0  # OPT word_embed_proj_dim when it differs from hidden; 0 = hidden
    sliding_window: int | None = None
    windowed_layers: int = 0
    moe: Moe | None = None
    mla: Mla | None = None
    source: str = "catalog"
    hf_id: str | None = None

    @property
    def attention(self) -> str:
        """ "mla", "mha", "mqa" or "gqa"."""
        if self.mla is not None:
            return "mla"
        if self.kv_heads == self.heads:
            return "mha"
        return "mqa" if self.kv_heads == 1 else "gqa"


def _dtype(cfg: Mapping[str, Any]) -> str:
    """The 16-bit dtype vLLM's dtype="auto" would load: fp32 checkpoints run in fp16."""
    given = cfg.get("torch_dtype") if cfg.get("torch_dtype") is not None else cfg.get("dtype")
    raw = given.lower() if isinstance(given, str) and given else "bfloat16"
    return "fp16" if raw in ("float16", "fp16", "half", "float32", "fp32") else "bf16"


def spec_from_config(config: Mapping[str, Any], *, name: str, source: str) -> ModelShape:
    """A ModelShape from a Hugging Face config.json's dict; RecommendError names a missing key."""
    if len(name) > MAX_NAME:
        raise RecommendError(
            f"a model name is at most {MAX_NAME} characters long, not {len(name)}",
            option="model",
        )
    cfg: Mapping[str, Any] = config
    if "text_config" in config and "num_hidden_layers" not in config:
        text_config = config["text_config"]
        if not isinstance(text_config, Mapping):
            raise RecommendError(
                f"{name}: text_config must be a JSON object, not {shown(text_config)}",
                option="config_json",
                value="text_config",
            )
        cfg = {**text_config, "torch_dtype": config.get("torch_dtype")}
    model_type = config_text(cfg, name, "model_type").lower()
    layers = config_int(cfg, name, "num_hidden_layers", "n_layer", "num_layers", "n_layers")
    hidden = config_int(cfg, name, "hidden_size", "n_embd", "d_model", "dim")
    heads = config_int(cfg, name, "num_attention_heads", "n_head", "n_heads")
    if hidden < heads and cfg.get("head_dim") is None:
        raise RecommendError(
            f"{name}: hidden_size {hidden} / {heads} attention heads leaves no head_dim; "
            "give head_dim",
            option="config_json",
            value="head_dim",
        )
    kv_default = 1 if cfg.get("multi_query") else heads
    kv_heads = config_int(
        cfg, name, "num_key_value_heads", "num_kv_heads", "n_head_kv", default=kv_default
    )
    head_dim = config_int(cfg, name, "head_dim", default=hidden // heads)
    gated = model_type not in _LINEAR_BIAS_TYPES
    intermediate = config_int(
        cfg, name, "intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", default=4 * hidden
    )
    max_position = config_int(
        cfg, name, "max_position_embeddings", "n_positions", "max_seq_len", "seq_length"
    )
    tied = bool(cfg.get("tie_word_embeddings", model_type in _TIED_BY_DEFAULT))
    learned = {"gpt2": max_position, "opt": max_position + 2}.get(model_type, 0)
    embed_dim = config_int(cfg, name, "word_embed_proj_dim", default=hidden)
    window, windowed = _sliding(cfg, name, model_type, layers, max_position)
    mla = _mla(cfg, name) if model_type in _MLA_TYPES or "kv_lora_rank" in cfg else None
    if mla is not None:  # the q/k head size; some configs say head_dim = qk_rope_head_dim
        head_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
    return ModelShape(
        name=name,
        model_type=model_type or "unknown",
        layers=layers,
        hidden=hidden,
        intermediate=intermediate,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=config_int(cfg, name, "vocab_size", "padded_vocab_size"),
        max_position=max_position,
        tied=tied,
        dtype=_dtype(config),
        qkv_bias=bool(cfg.get("attention_bias", model_type in _QKV_BIAS_TYPES)),
        linear_bias=model_type in _LINEAR_BIAS_TYPES,
        gated_mlp=gated,
        norm_bias=model_type in _LAYERNORM_TYPES,
        norms_per_layer=4 if model_type in _FOUR_NORM_TYPES else 2,
        qk_norm=model_type in _QK_NORM_TYPES,
        learned_positions=learned,
        embed_dim=0 if embed_dim == hidden else embed_dim,
        sliding_window=window,
        windowed_layers=windowed,
        moe=_moe(cfg, name, model_type, layers, intermediate),
        mla=mla,
        source=source,
    )


def _sliding(
    cfg: Mapping[str, Any], name: str, model_type: str, layers: int, max_position: int
) -> tuple[int | None, int]:
    """(window, number of windowed layers). Phi-3's sliding_window is not applied (vLLM's
    Llama-family models honour a window only where ``layer_types`` says so)."""
    window = cfg.get("sliding_window")
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        return None, 0
    if window >= max_position or cfg.get("use_sliding_window") is False:
        return None, 0
    layer_types = config_list(cfg, name, "layer_types")
    if layer_types:
        windowed = sum(1 for kind in layer_types if kind == "sliding_attention")
        return window, min(layers, windowed)
    if model_type == "gemma2":
        return window, (layers + 1) // 2  # even layers are local
    if model_type in ("gemma3", "gemma3_text"):
        pattern = config_int(cfg, name, "sliding_window_pattern", default=6) or 6
        return window, layers - layers // pattern
    if model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and cfg.get("use_sliding_window"):
        return window, max(0, layers - config_int(cfg, name, "max_window_layers", default=0))
    if model_type in _SLIDING_ALL_LAYERS:
        return window, layers
    return None, 0


def _moe(
    cfg: Mapping[str, Any], name: str, model_type: str, layers: int, intermediate: int
) -> Moe | None:
    experts = config_int(
        cfg, name, "num_local_experts", "num_experts", "n_routed_experts", default=0
    )
    if experts <= 1:
        return None
    top_k = config_int(cfg, name, "num_experts_per_tok", "moe_topk", default=2)
    if top_k > experts:
        raise RecommendError(
            f"{name}: {top_k} experts per token, but only {experts} experts",
            option="config_json",
            value="num_experts_per_tok",
        )
    width = config_int(cfg, name, "moe_intermediate_size", default=intermediate)
    # Layer counts in closed form: a loop over the layers would run as long as a config says.
    if model_type in _MLA_TYPES or "first_k_dense_replace" in cfg:
        first = config_int(cfg, name, "first_k_dense_replace", default=0)
        freq = config_int(cfg, name, "moe_layer_freq", default=1) or 1
        # layers i with first <= i < layers and i % freq == 0
        moe_layers = multiples_below(layers, freq) - multiples_below(min(first, layers), freq)
        shared = config_int(cfg, name, "n_shared_experts", default=0) * width
        score_bias = str(cfg.get("topk_method", "")) == "noaux_tc"
        return Moe(experts, top_k, width, moe_layers, shared, score_bias=score_bias)
    step = config_int(cfg, name, "decoder_sparse_step", default=1) or 1
    dense_only = layer_indexes(cfg, name, "mlp_only_layers")
    # layers i < layers with (i + 1) % step == 0, less those listed as dense
    moe_layers = layers // step - sum(1 for i in dense_only if i < layers and (i + 1) % step == 0)
    shared = config_int(cfg, name, "shared_expert_intermediate_size", default=0)
    return Moe(experts, top_k, width, moe_layers, shared, shared_gate=shared > 0)


def _mla(cfg: Mapping[str, Any], name: str) -> Mla:
    q_lora = config_int(cfg, name, "q_lora_rank", default=0)
    return Mla(
        kv_lora_rank=config_int(cfg, name, "kv_lora_rank"),
        q_lora_rank=q_lora or None,
        qk_rope_head_dim=config_int(cfg, name, "qk_rope_head_dim"),
        qk_nope_head_dim=config_int(cfg, name, "qk_nope_head_dim"),
        v_head_dim=config_int(cfg, name, "v_head_dim"),
    )


def param_groups(spec: ModelShape) -> ParamGroups:
    """Parameters by kind, computed from the shapes (see the module docstring)."""
    h, layers = spec.hidden, spec.layers
    width = spec.embed_dim or h
    embed = spec.vocab * width + spec.learned_positions * h
    lm_head = 0 if spec.tied else spec.vocab * width
    linear = 0 if width == h else 2 * h * width  # OPT project_in / project_out
    other = h * (2 if spec.norm_bias else 1)  # the final norm
    q_width = spec.heads * spec.head_dim
    kv_width = spec.kv_heads * spec.head_dim
    if spec.mla is not None:
        m = spec.mla
        qk_head = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank is None:
            attn = h * spec.heads * qk_head
        else:
            attn = h * m.q_lora_rank + m.q_lora_rank * spec.heads * qk_head
            other += layers * m.q_lora_rank  # q_a_layernorm
        attn += h * (m.kv_lora_rank + m.qk_rope_head_dim)
        attn += m.kv_lora_rank * spec.heads * (m.qk_nope_head_dim + m.v_head_dim)
        attn += spec.heads * m.v_head_dim * h
        other += layers * m.kv_lora_rank  # kv_a_layernorm
    else:
        attn = h * q_width + 2 * h * kv_width + q_width * h
    linear += layers * attn
    if spec.qkv_bias or spec.linear_bias:
        other += layers * (q_width + 2 * kv_width)
    if spec.linear_bias:
        other += layers * h  # o_proj bias
    if spec.qk_norm:
        other += layers * 2 * spec.head_dim
    other += layers * spec.norms_per_layer * h * (2 if spec.norm_bias else 1)
    dense_mlp = (3 if spec.gated_mlp else 2) * h * spec.intermediate
    moe = spec.moe
    dense_layers = layers - (moe.moe_layers if moe else 0)
    linear += dense_layers * dense_mlp
    if spec.linear_bias:
        other += dense_layers * (spec.intermediate + h)
    if moe is not None:
        per_layer = moe.experts * 3 * h * moe.expert_intermediate + h * moe.experts
        per_layer += 3 * h * moe.shared_intermediate + (h if moe.shared_gate else 0)
        linear += moe.moe_layers * per_layer
        if moe.score_bias:
            other += moe.moe_layers * moe.experts
    return ParamGroups(embed=embed, lm_head=lm_head, linear=linear, other=other)


def active_params(spec: ModelShape, groups: ParamGroups) -> int:
    """Parameters used per token: all but the experts a token is not routed to."""
    if spec.moe is None:
        return groups.total
    idle = spec.moe.experts - spec.moe.top_k
    return (
        groups.total - spec.moe.moe_layers * idle * 3 * spec.hidden * spec.moe.expert_intermediate
    )


def kv_elements_per_layer(spec: ModelShape, shards: int = 1) -> int:
    """KV cache elements one token adds to one layer on one of ``shards`` tensor-parallel GPUs.

    KV heads are split over the shards (a shard holds at least one: vLLM replicates KV heads
    when there are fewer than GPUs); an MLA latent is replicated on every shard."""
    if spec.mla is not None:
        return spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim
    return 2 * -(-spec.kv_heads // shards) * spec.head_dim


def layer_groups(spec: ModelShape) -> tuple[tuple[int, int | None], ...]:
    """(layers, window or None) for the full-attention and the sliding-window layers."""
    full = spec.layers - spec.windowed_layers
    groups: list[tuple[int, int | None]] = []
    if full:
        groups.append((full, None))
    if spec.windowed_layers:
        groups.append((spec.windowed_layers, spec.sliding_window))
    return tuple(groups)
