"""What perfd never shows: secret settings, secret parts of URLs, known secrets in any text.

One module decides what is secret, and every place that shows config values, URLs, error
text or provider answers goes through it: the ``config`` reply (perfd.schema.to_dict), config
errors, the log processor (perfd.log), the provider client and the alert sinks. Pure
functions of values, standard library only.

**Names.** ``is_secret_name`` (log fields, model ``options`` keys, URL query parameters): the
name, lower-cased with ``-`` read as ``_``, contains one of ``SECRET_WORDS`` (``token``,
``secret``, ``password``, ``api_key``...). The plural ``tokens`` is a count (``max_tokens``),
not a secret. Options keys and query parameters also match a few short exact names
(``key``, ``auth``, ``pass``, ``pwd``, ``sig``; ``code`` in a query).

**URLs.** ``redact_url`` keeps the scheme, host, port and the readable path, and replaces
with ``<redacted>``: the whole ``user:password@`` userinfo; the value of each query parameter
whose name is secret or whose value looks like a token; the fragment; and each path segment
that looks like a token (``looks_like_token``): 16 characters or more unless only lower-case
letters and ``-``, ``_``, ``.``; or 8 or more letters and digits with at least one of each
(Slack's ``T0123ABCD`` ids); or any segment after one named like a secret (``/token/abc``).
So ``https://u:p@hooks.slack.com/services/T0123ABCD/B0123ABCD/AbCd...`` is shown as
``https://<redacted>@hooks.slack.com/services/<redacted>/<redacted>/<redacted>``. Redacting
is idempotent: a redacted URL redacts to itself, and is still a valid setting.

**Text.** ``Scrubber`` replaces given secrets (an API key, a URL's password and tokens) in
any text or JSON-like value, also when any of their characters is HTML-escaped (named or
numeric entity), percent-encoded (either case) or JSON-escaped, and redacts every URL found
in the text. Exception messages from requests and urllib3
embed the URL, or only its path (``Max retries exceeded with url: /services/...``): scrub
them with the URL's own secrets before logging or replying.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar, cast

T = TypeVar("T")

REDACTED: Final = "<redacted>"

SECRET_WORDS: Final = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
    "authorization",
    "cookie",
    "signature",
)
# Whole names that are secret as options keys and query parameters (too short for a substring
# rule: "key" is in "keep", "sig" in "design"); log fields named "key" are public key names.
SECRET_NAMES: Final = frozenset({"key", "auth", "pass", "pwd", "sig"})
SECRET_QUERY_NAMES: Final = SECRET_NAMES | {"code"}  # Azure Functions' ?code=

_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,15}://[^\s'\"<>`{}|\\^]+")
_URL_TRAILER: Final = ".,;:)]"
_WORDY: Final = re.compile(r"[a-z]+(?:[-_.][a-z]+)*")
_ALNUM: Final = re.compile(r"[A-Za-z0-9]+")
MIN_SCRUBBED: Final = 4  # a shorter literal (a 2-letter password) would mangle other text
MAX_DEPTH: Final = 32  # JSON-like values nested deeper are left as they are


def is_secret_name(name: str) -> bool:
    """A log field, option or parameter name that says its value is a secret."""
    lowered = name.lower().replace("-", "_").replace("tokens", "")
    return any(word in lowered for word in SECRET_WORDS)


def is_secret_key(name: str) -> bool:
    """An options key (``[models.NAME] options``) whose value is a secret."""
    return is_secret_name(name) or name.lower() in SECRET_NAMES


def _is_secret_query(name: str) -> bool:
    return is_secret_name(name) or name.lower() in SECRET_QUERY_NAMES


def looks_like_token(text: str) -> bool:
    """A path segment or query value that looks like an opaque token (see the docstring)."""
    if not text or text == REDACTED:
        return False
    if len(text) >= 16 and not _WORDY.fullmatch(text):
        return True
    return (
        len(text) >= 8
        and bool(_ALNUM.fullmatch(text))
        and any(c.isdigit() for c in text)
        and any(c.isalpha() for c in text)
    )


def _split(url: str) -> tuple[str, str, str, str, str] | None:
    """(scheme, netloc, path, query, fragment) as written (no normalising); None if none."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    return scheme, netloc, slash + path, query, fragment


def _path(path: str) -> str:
    segments = path.split("/")
    out = []
    after_secret = False
    for segment in segments:
        name = urllib.parse.unquote(segment)
        out.append(REDACTED if segment and (after_secret or looks_like_token(name)) else segment)
        after_secret = bool(segment) and is_secret_key(name)
    return "/".join(out)


def _query(query: str) -> str:
    out = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        plain_name = urllib.parse.unquote_plus(name)
        plain_value = urllib.parse.unquote_plus(value)
        if eq and value and (_is_secret_query(plain_name) or looks_like_token(plain_value)):
            out.append(f"{name}={REDACTED}")
        elif not eq and looks_like_token(plain_name):
            out.append(REDACTED)
        else:
            out.append(item)
    return "&".join(out)


def redact_url(url: str) -> str:
    """``url`` with its secret parts replaced by ``<redacted>`` (see the module docstring)."""
    parts = _split(url)
    if parts is None:  # no scheme ("user:pw@host/x"): still no userinfo shown
        host, at, rest = url.partition("@")
        return f"{REDACTED}@{rest}" if at and "/" not in host else url
    scheme, netloc, path, query, fragment = parts
    if "@" in netloc:
        netloc = REDACTED + "@" + netloc.rpartition("@")[2]
    text = f"{scheme}://{netloc}{_path(path)}"
    if "?" in url.partition("#")[0]:
        text += "?" + _query(query)
    if "#" in url:
        text += "#" + (REDACTED if fragment else "")
    return text


def host(url: str) -> str:
    """The ``host:port`` of ``url``, without its userinfo ("" when it has none)."""
    parts = _split(url)
    return parts[1].rpartition("@")[2] if parts is not None else ""


def url_secrets(url: str) -> list[str]:
    """The secret parts of ``url`` as written in it (and decoded): its userinfo, password,
    a long user name, secret query values, token path segments. For a Scrubber."""
    parts = _split(url)
    if parts is None:
        return []
    _, netloc, path, query, _ = parts
    found: list[str] = []
    if "@" in netloc:
        userinfo = netloc.rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        found += [userinfo, password]
        if len(user) >= 8:  # a token as the user name (https://TOKEN@host)
            found.append(user)
    shown_path = _path(path).split("/")
    found += [seg for seg, shown in zip(path.split("/"), shown_path, strict=True) if seg != shown]
    for item, shown in zip(query.split("&"), _query(query).split("&"), strict=True):
        if item != shown:
            found.append(item.partition("=")[2] if "=" in item else item)
    decoded = [urllib.parse.unquote(s) for s in found]
    return [s for s in dict.fromkeys([*found, *decoded]) if len(s) >= MIN_SCRUBBED]


def redact_text(text: str) -> str:
    """``text`` with each URL in it redacted (exception messages, error bodies)."""
    if "://" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        stripped = url.rstrip(_URL_TRAILER)
        return redact_url(stripped) + url[len(stripped) :]

    return _URL_IN_TEXT.sub(one, text)


_ENTITIES: Final = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}


def _char(c: str) -> str:
    """A pattern for one character of a secret in any of the forms a body may carry it:
    as is, percent-encoded, an HTML entity (named, decimal, hex), a JSON escape."""
    n = ord(c)
    forms = [re.escape(c), f"%(?i:{n:02x})", f"&#0*{n};", f"&#(?i:x0*{n:x});"]
    forms.append(f"\\\\(?i:u{n:04x})")
    if c in _ENTITIES:
        forms.append(f"&{_ENTITIES[c]};")
    if c in '/"\\':
        forms.append(re.escape("\\" + c))
    if c == " ":
        forms.append(re.escape("+"))
    return "(?:" + "|".join(forms) + ")"


def _pattern(secret: str) -> str:
    """A pattern matching ``secret`` however each character of it is escaped (a body may
    HTML-escape, percent-encode or JSON-escape some characters and not others)."""
    return "".join(_char(c) for c in secret)


class Scrubber:
    """Replaces known secrets (and their encoded forms) and redacts URLs in text and values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        kept = {secret for secret in secrets if len(secret) >= MIN_SCRUBBED}
        ordered = sorted(kept, key=len, reverse=True)  # the longest secret first
        self._pattern = re.compile("|".join(map(_pattern, ordered))) if ordered else None

    def text(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return redact_text(text)

    def value(self, value: T) -> T:
        """A JSON-like value with every string scrubbed (the same object when unchanged)."""
        return cast(T, self._value(value, 0))

    def _value(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if depth >= MAX_DEPTH:
            return value
        if isinstance(value, dict):
            items = {self.text(k) if isinstance(k, str) else k: v for k, v in value.items()}
            out = {k: self._value(v, depth + 1) for k, v in items.items()}
            same = list(out) == list(value) and all(
                a is b for a, b in zip(out.values(), value.values(), strict=True)
            )
            return value if same else out
        if isinstance(value, list):
            scrubbed = [self._value(v, depth + 1) for v in value]
            return value if all(a is b for a, b in zip(scrubbed, value, strict=True)) else scrubbed
        return value


def redact_table(table: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """A free-form table (loader ``options``) with secret-named entries redacted, nested
    tables walked and URLs in strings redacted."""
    return {key: _entry(key, value, depth) for key, value in table.items()}


def _entry(key: str, value: Any, depth: int) -> Any:
    if is_secret_key(key):
        return REDACTED
    return _plain(value, depth)


def _plain(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        return redact_table(value, depth + 1)
    if isinstance(value, list | tuple):
        return [_plain(v, depth + 1) for v in value]
    return value


def redact_setting(mark: object, value: Any) -> Any:
    """A setting's value as shown, per its schema mark: True (the whole value), "url" (the
    secret parts of a URL), "table" (secret-named entries). A value of the wrong type (as a
    config error shows it) has the URLs in its strings redacted."""
    if not value:
        return value
    if mark == "url" and isinstance(value, str):
        return redact_url(value)
    if mark == "table" and isinstance(value, str) and is_secret_name(value):
        return REDACTED  # options = "api_key=..." (a string where a table belongs)
    if mark in ("url", "table"):  # a table, or a wrong type a config error shows
        return _plain(value, 0)
    return REDACTED


def redact_event(event: dict[str, Any]) -> dict[str, Any]:
    """A log event with secret-named fields redacted and URLs in its text values redacted."""
    for key, value in event.items():
        if is_secret_name(key):
            event[key] = REDACTED
        elif isinstance(value, str) and "://" in value:
            event[key] = redact_text(value)
        elif isinstance(value, dict | list):
            event[key] = _plain(value, 0)
    return event
