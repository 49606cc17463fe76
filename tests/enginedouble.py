"""A small stand-in for perfd.engines' fetcher and SGLang reader, for real-perfd tests on a
branch without them (tests/launcher.py ``--engines-double``): the same contract
(perfd/engines/readers/__init__.py), kept minimal.

``fetch(target, timeout)`` gets a path over HTTP (urllib) and maps failures to EngineDown,
EngineTimeout and PayloadError; ``read(target, get)`` reads SGLang's /metrics with
prometheus_client's parser. The metric names are SGLang's own (sgl-project/sglang,
python/sglang/srt/metrics/collector.py; docs/references/production_metrics.md):
``sglang:num_running_reqs``, ``sglang:num_queue_reqs``, ``sglang:num_used_tokens``,
``sglang:max_total_num_tokens``, ``sglang:cache_hit_rate``, labelled ``model_name``.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Callable

from perfd.engines.errors import EngineDown, EngineTimeout, PayloadError
from perfd.engines.record import Reading, ServedModel, Target

MAX_BODY = 1 << 20


def fetch(target: Target, timeout: float) -> Callable[[str], bytes]:
    def get(path: str) -> bytes:
        url = target.url + path
        try:
            with urllib.request.urlopen(url, timeout=timeout) as reply:
                return bytes(reply.read(MAX_BODY))
        except urllib.error.HTTPError as exc:
            raise PayloadError(f"{path}: HTTP {exc.code}") from None
        except TimeoutError:
            raise EngineTimeout(f"{path}: no answer within {timeout:g}s") from None
        except (urllib.error.URLError, ConnectionError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise EngineTimeout(f"{path}: no answer within {timeout:g}s") from None
            raise EngineDown(f"{path}: {reason}") from None

    return get


def read(target: Target, get: Callable[[str], bytes]) -> Reading:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = get("/metrics").decode()
        values: dict[str, float] = {}
        model = None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
                model = model or sample.labels.get("model_name")
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"/metrics: not Prometheus text ({exc})") from None
    if "sglang:num_running_reqs" not in values:
        raise PayloadError("/metrics: no sglang:num_running_reqs")
    used = values.get("sglang:num_used_tokens")
    total = values.get("sglang:max_total_num_tokens")
    return Reading(
        models=(ServedModel(model or "?"),),
        kv_capacity_tokens=None if total is None else int(total),
        kv_used_tokens=None if used is None else int(used),
        kv_usage_ratio=None if used is None or not total else used / total,
        requests_running=int(values["sglang:num_running_reqs"]),
        requests_waiting=int(values.get("sglang:num_queue_reqs", 0)),
        prefix_cache_hit_ratio=values.get("sglang:cache_hit_rate"),
    )
