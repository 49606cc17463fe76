"""The readers' shared parsing: Prometheus text and JSON from an engine, every failure a
PayloadError naming the endpoint.

    samples = prometheus(get("/metrics"), "/metrics")
    running = samples.total("vllm:num_requests_running")     # summed over every series
    name, value = samples.first_total(("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"))
    doc = json_object(get("/v1/models"), "/v1/models")
    models = field(doc, "data", list, "/v1/models")          # None when absent

Prometheus text is parsed with prometheus_client's parser (never by hand); samples are
indexed by their sample name (a counter's ``_total`` included), each with its labels. NaN and
infinite values are dropped (an engine's "no figure yet"). Text from the engine is untrusted:
label values kept as settings are cut to ``MAX_TEXT`` characters.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from perfd.engines.errors import PayloadError
from perfd.engines.record import ServedModel

MAX_TEXT = 200
T = TypeVar("T")

Labels = Mapping[str, str]


class Samples:
    """The samples of one Prometheus exposition, by sample name."""

    def __init__(self, series: dict[str, list[tuple[dict[str, str], float]]]) -> None:
        self.series = series

    def names(self) -> set[str]:
        return set(self.series)

    def rows(
        self, name: str, keep: Callable[[Labels], bool] | None = None
    ) -> list[tuple[Labels, float]]:
        """``name``'s (labels, value) rows with a finite value that ``keep`` accepts."""
        return [
            (labels, value)
            for labels, value in self.series.get(name, ())
            if keep is None or keep(labels)
        ]

    def total(self, name: str, keep: Callable[[Labels], bool] | None = None) -> float | None:
        """The sum over ``name``'s series; None when it has none."""
        rows = self.rows(name, keep)
        return sum(value for _, value in rows) if rows else None

    def first_total(
        self, names: Iterable[str], keep: Callable[[Labels], bool] | None = None
    ) -> tuple[str | None, float | None]:
        """The first of ``names`` present, with its sum; (None, None) when none is."""
        for name in names:
            value = self.total(name, keep)
            if value is not None:
                return name, value
        return None, None


def prometheus(data: bytes, where: str) -> Samples:
    """Parse Prometheus text exposition; PayloadError when it is not."""
    from prometheus_client.parser import text_string_to_metric_families

    text = data.decode("utf-8", "replace")
    if "\x00" in text:
        raise PayloadError(f"{where}: not Prometheus text (binary bytes)")
    series: dict[str, list[tuple[dict[str, str], float]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                value = float(sample.value)
                if not math.isfinite(value):
                    continue
                labels = {str(k): str(v) for k, v in sample.labels.items()}
                series.setdefault(str(sample.name), []).append((labels, value))
    except Exception as exc:  # the parser raises ValueError, IndexError, TypeError... on junk
        raise PayloadError(f"{where}: not Prometheus text ({_short(exc)})") from None
    return Samples(series)


def json_value(data: bytes, where: str) -> Any:
    """The JSON document in ``data``; PayloadError when it is not JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PayloadError(f"{where}: not JSON ({_short(exc)})") from None


def json_object(data: bytes, where: str) -> dict[str, Any]:
    """The JSON object in ``data``; PayloadError for any other document."""
    doc = json_value(data, where)
    if not isinstance(doc, dict):
        raise PayloadError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    return doc


def field(obj: Mapping[str, Any], key: str, kind: type[T], where: str) -> T | None:
    """``obj[key]`` when it is a ``kind`` (an int also passes for a float, a bool never for
    a number); None when absent or null; PayloadError for a value of another type."""
    value = obj.get(key)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise PayloadError(f"{where}: {key!r} should be {_kind(kind)}, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value[:MAX_TEXT]  # type: ignore[return-value]
    return value


def count(value: float | None) -> int | None:
    """A gauge's value as a count (finite, rounded); None stays None."""
    if value is None or not math.isfinite(value) or abs(value) > 2**62:
        return None
    return round(value)


def label_int(labels: Labels, key: str) -> int | None:
    """An integer label value (vLLM writes "None" before the value is known)."""
    text = labels.get(key, "").strip()
    try:
        number = float(text)
    except ValueError:
        return None
    return count(number) if number == number // 1 else None


def label_float(labels: Labels, key: str) -> float | None:
    try:
        number = float(labels.get(key, "").strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def text(value: str) -> str:
    return value[:MAX_TEXT]


def _kind(kind: type) -> str:
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(kind, kind.__name__)


def _short(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    message = "".join(c if c.isprintable() else "?" for c in message)
    return message[:MAX_TEXT] or type(exc).__name__


def openai_models(data: bytes, where: str) -> list[ServedModel]:
    """An OpenAI-compatible ``/v1/models`` list (vLLM's and SGLang's ``ModelCard``): ``id``,
    ``root`` (the weights) and ``max_model_len`` (the served context) of each model; entries
    with a ``parent`` (vLLM's LoRA adapters) are not models of their own."""
    doc = json_object(data, where)
    cards = field(doc, "data", list, where)
    if cards is None:
        raise PayloadError(f"{where}: no 'data' list of models")
    models = []
    for card in cards:
        if not isinstance(card, dict):
            raise PayloadError(f"{where}: a model entry is {type(card).__name__}, not an object")
        name = field(card, "id", str, where)
        if name is None:
            raise PayloadError(f"{where}: a model entry without an 'id'")
        if card.get("parent") is not None:
            continue
        context = field(card, "max_model_len", int, where)
        models.append(ServedModel(name=name, context=context, path=field(card, "root", str, where)))
    return models
