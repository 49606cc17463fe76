"""What to try, for an error: the hint perfctl prints under the message.

An error's class gives a default (perfctl.errors); these pick a better one from what failed.
perfd's error messages carry the facts the hint needs: a provider failure reads
``provider 'NAME' (KIND, HTTP 429, 3 retries): ...`` (perfd.net.provider.ProviderError), and the
cache says why a model is busy or does not fit (perfd.cache.core). A hint adds to the message what
to do next; it never repeats it, and it is empty when the message already says it all.
"""

from __future__ import annotations

import os
from typing import Final

from perfd.wire import protocol

# A provider failure's kind (perfd.net.provider) -> what to try.
_PROVIDER: Final = {
    "connect": "perfd could not connect to the provider: is its server running at the "
    "base_url perfctl providers shows (a local vLLM or Ollama must listen first)?",
    "timeout": "the provider did not answer in time: check that it is up, or raise "
    "[providers.NAME] connect_timeout or read_timeout",
    "auth": "the provider refused perfd's API key: check the key perfd reads (perfctl "
    "providers says where from), then perfctl reload",
    "rate_limited": "the provider limits the request rate and perfd already retried with "
    "backoff: retry later, or send fewer requests",
    "http": "the provider answered with an error (its reason is above); perfctl providers "
    "counts the failures",
    "protocol": "the answer was not what an OpenAI-compatible API sends: does base_url end "
    "with the API's /v1?",
}
_KEY: Final = (
    "perfd reads the key in its own environment, not in perfctl's: for the service, "
    "systemctl edit perfd and add Environment=NAME=KEY, or use api_key_file with a file perfd "
    "can read; then perfctl reload (perfctl providers shows where perfd looks)"
)


def for_failure(code: str, message: str) -> str | None:
    """A hint for perfd's error reply, or None to keep the class's default."""
    kind = provider_kind(message)
    if kind is not None:
        if kind == "config":
            if "api_key" in message:
                return _KEY
            return "fix the [providers.NAME] table (perfctl config shows it), then perfctl reload"
        return _PROVIDER.get(kind)
    if code == protocol.BUSY:
        if "is pinned" in message:
            return (
                "a pin keeps it loaded on purpose: perfctl unpin it, then evict it (pin = true "
                "in its [models.NAME] table pins it again at the next reload)"
            )
        if " in use by " in message:
            return "it can go once those requests end; evict --all skips it and unloads the rest"
        if "retry" in message:
            return ""  # the message says what to do
    if code == protocol.NO_CAPACITY:
        if "max_models" in message:
            return "raise [cache] max_models, or unpin or evict a model (perfctl ps lists them)"
        return (
            "perfctl ps shows each model's size and whether it is pinned or in use; the "
            "budgets are [cache] ram_budget and gpu_budget (perfctl reload applies a change)"
        )
    if code == protocol.NOT_FOUND:
        if message.startswith("unknown model"):
            return (
                "add a [models.NAME] table and perfctl reload, or define it at run time: "
                "perfctl load NAME --target module:factory"
            )
        if "is not loaded" in message:
            return "perfctl ps lists the loaded models; perfctl load NAME loads one"
    if code == protocol.FORBIDDEN:
        if "read-only socket" in message:
            return (
                f"admin commands go to {protocol.MAIN_SOCKET}; to open it you need its group: "
                "ask an admin to add you (usermod -aG GROUP $USER), then log in again"
            )
        if "may not run admin commands" in message:
            return (
                "ask an admin to add you to one of those groups (usermod -aG GROUP $USER, then "
                "log in again) or to [access] admin_users"
            )
        if "is read-only" in message:
            return (
                "ask perfd's admin to give your key the admin role in [remote] "
                "authorized_keys, then reload perfd"
            )
    return None


def provider_kind(message: str) -> str | None:
    """``connect`` from ``... provider 'x' (connect, 3 retries): ...``; None if no provider."""
    start = message.find("provider '")
    if start < 0:
        return None
    opened = message.find("' (", start + len("provider '"))
    if opened < 0:
        return None
    facts = message[opened + 3 :]
    ends = [i for i in (facts.find(","), facts.find(")")) if i >= 0]
    kind = facts[: min(ends)] if ends else ""
    return kind if kind.replace("_", "").isalpha() else None


def for_socket(path: str | None) -> str | None:
    """For a socket perfctl may not open: the group that opens it, as the file says."""
    if path is None:
        return None
    import grp
    import pwd

    try:
        info = os.stat(path)
    except OSError:
        return None
    name = os.path.basename(path)
    try:
        group = grp.getgrgid(info.st_gid).gr_name
    except KeyError:
        return (
            f"{name} belongs to gid {info.st_gid}, a group with no name here: ask an admin to "
            "set [server] group to a group that exists (systemd/perfd.sysusers creates "
            "perfd) and restart perfd"
        )
    text = (
        f"{name} belongs to group {group}: ask an admin to add you to it "
        f"(usermod -aG {group} $USER), then log in again"
    )
    try:
        owner = pwd.getpwuid(info.st_uid)
    except KeyError:
        return text
    if group != "perfd" and owner.pw_gid == info.st_gid:
        text += f"; {group} is perfd's own group: is its [server] group missing on this host?"
    return text
