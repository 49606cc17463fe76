"""providers: each [providers.NAME]'s base URL, where its API key comes from and whether it
is set in perfd's environment (never the key), and once it has been ``used``, its client's
counters (perfd.net.provider.Provider.stats). Nothing here builds a provider."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from perfd import config, redaction
from perfd.handlers.view import ProvidersView


def providers(view: ProvidersView, _args: dict[str, Any]) -> dict[str, Any]:

    configured = view.loaded.config.providers
    used = view.providers.stats() if view.providers_started else {}
    out: dict[str, Any] = {}
    for name in sorted(configured):
        cfg = configured[name]
        out[name] = {
            "base_url": redaction.redact_url(cfg.base_url),
            **key_facts(cfg, os.environ),
            "used": False,
            **used.get(name, {}),
        }
    return {"providers": out}


def provider_counts(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``providers`` section of ``stats``: the counters of the providers used so far."""
    return {
        name: {k: v for k, v in facts.items() if k not in ("used", "base_url")}
        for name, facts in stats.items()
        if facts.get("used")
    }


def key_facts(cfg: config.ProviderConfig, environ: Mapping[str, str]) -> dict[str, Any]:
    """Where a provider's API key comes from and whether it is there: never the key itself."""
    if cfg.api_key_env:
        present = bool(environ.get(cfg.api_key_env, "").strip())
        return {"key_from": f"env {cfg.api_key_env}", "key_set": present}
    if cfg.api_key_file:
        try:
            present = Path(cfg.api_key_file).stat().st_size > 0
            present = present and os.access(cfg.api_key_file, os.R_OK)
        except OSError:
            present = False
        return {"key_from": f"file {cfg.api_key_file}", "key_set": present}
    return {"key_from": None, "key_set": False}
