"""The machinery behind perfd's config: documented fields, strict parsing, reference docs.

A config is a tree of frozen dataclasses. Each leaf field is made with ``option`` (its doc,
its kind, its range), each table with ``section`` (a factory giving the table's defaults, so
two tables of one class may default differently). ``parse`` walks the tree: an unknown key, a
wrong type or an out-of-range value raises ConfigError naming the file, the key, the value
and what is allowed. A dataclass may also define ``problems()`` for checks across fields.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from perfd import redaction
from perfd.errors import ConfigError
from perfd.wire.units import format_duration, format_size, parse_duration, parse_size
from perfd.wire.values import FOREVER

KINDS: Final = (
    "str",
    "path",
    "choice",
    "bool",
    "int",
    "float",
    "size",
    "duration",
    "ttl",  # a duration, or -1 / "forever"
    "budget",  # a size, or a percent of the whole: "50%"
    "table",  # free-form key/value table (loader options)
    "names",  # a list of names (users, groups): kept as a tuple of strings
)
SECRET_MARKS: Final = (False, True, "url", "table")


def option(
    default: Any,
    doc: str,
    *,
    kind: str,
    choices: tuple[str, ...] = (),
    minimum: float | None = None,
    maximum: float | None = None,
    secret: bool | str = False,
    key: str | None = None,
) -> Any:
    """A leaf setting; ``key`` is its TOML name when that is not a Python name ("for").

    ``secret`` says what of its value is never shown (``config`` reply, config errors):
    True, all of it; ``"url"``, the secret parts of a URL; ``"table"``, the entries of a
    table whose names are secret (perfd.redaction has the rules).
    """
    assert kind in KINDS, kind
    assert secret in SECRET_MARKS, secret
    meta = {
        "doc": doc,
        "kind": kind,
        "choices": choices,
        "min": minimum,
        "max": maximum,
        "secret": secret,
        "key": key,
    }
    return dataclasses.field(default=default, metadata=meta)


def section(factory: Callable[[], Any], doc: str) -> Any:
    """A nested table whose defaults come from ``factory()``."""
    return dataclasses.field(default_factory=factory, metadata={"doc": doc, "section": True})


def section_map(factory: Callable[[], Any], doc: str, name: str = "NAME") -> Any:
    """Tables under one prefix, one per user-chosen name (`[models.NAME]`), each parsed
    against ``factory()``; the field's value is a dict of name to dataclass."""
    meta = {"doc": doc, "section_map": factory, "map_name": name}
    return dataclasses.field(default_factory=dict, metadata=meta)


def _key(spec: dataclasses.Field[Any]) -> str:
    return spec.metadata.get("key") or spec.name


def _settings(obj: Any) -> list[dataclasses.Field[Any]]:
    """The fields made by option() or section(); other dataclass fields are internal."""
    return [f for f in dataclasses.fields(obj) if "doc" in f.metadata]


def parse(default: Any, data: Mapping[str, Any], path: str | None, prefix: str = "") -> Any:
    """``default`` with the values of ``data`` validated and applied; ConfigError otherwise."""
    fields = {_key(f): f for f in _settings(default)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib  # only here: a typo's suggestion

        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        raise ConfigError(
            path,
            prefix + unknown[0],
            "unknown key" + (f" (did you mean {prefix + close[0]}?)" if close else ""),
            value=data[unknown[0]],
            allowed=", ".join(prefix + name for name in fields),
        )
    values: dict[str, Any] = {}
    for name, value in data.items():
        spec = fields[name]
        dotted = prefix + name
        if spec.metadata.get("section"):
            if not isinstance(value, dict):
                raise ConfigError(
                    path, dotted, f"must be a table [{dotted}], got {shown(value)}", value=value
                )
            values[spec.name] = parse(getattr(default, spec.name), value, path, dotted + ".")
        elif "section_map" in spec.metadata:
            values[spec.name] = _parse_map(spec, value, path, dotted)
        else:
            values[spec.name] = check(spec.metadata, value, path, dotted)
    result = dataclasses.replace(default, **values)
    problems = getattr(result, "problems", None)
    if problems is not None:
        for name, message in problems():
            value = _shown_value(result, name)
            shows_value = shown(value) in message or repr(value) in message
            problem = message if shows_value else f"bad value {shown(value)}: {message}"
            raise ConfigError(path, prefix + name, problem, value=value)
    return result


def _parse_map(spec: dataclasses.Field[Any], value: Any, path: str | None, dotted: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(
            path, dotted, f"must hold tables [{dotted}.NAME], got {shown(value)}", value=value
        )
    out = {}
    for name, table in value.items():
        if not isinstance(table, dict):
            raise ConfigError(
                path, f"{dotted}.{name}", f"must be a table, got {shown(table)}", value=table
            )
        out[name] = parse(spec.metadata["section_map"](), table, path, f"{dotted}.{name}.")
    return out


def _shown_value(obj: Any, key: str) -> Any:
    """The value at ``key`` as an error may show it: redacted when its field is secret."""
    value = _get(obj, key)
    head, _, last = key.rpartition(".")
    owner = _get(obj, head) if head else obj
    if dataclasses.is_dataclass(owner):
        spec = next((f for f in _settings(owner) if _key(f) == last), None)
        if spec is not None and spec.metadata.get("secret"):
            return redaction.redact_setting(spec.metadata["secret"], value)
    return value


def _get(obj: Any, key: str) -> Any:
    """The value at a dotted TOML name below ``obj`` ("crit", "models.NAME.provider")."""
    for part in key.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
            continue
        obj = next((getattr(obj, f.name) for f in _settings(obj) if _key(f) == part), None)
    return obj


class _Bad(Exception):
    """A value a converter rejects; ``allowed`` says what it takes."""

    def __init__(self, allowed: str) -> None:
        self.allowed = allowed


def _string(meta: Mapping[str, Any], value: Any) -> Any:
    """Any text but NUL, which no name, path or URL holds (os and grp calls raise on it)."""
    if not isinstance(value, str) or "\0" in value:
        raise _Bad("a string (without NUL characters)")
    return value


def _choice(meta: Mapping[str, Any], value: Any) -> Any:
    if value not in meta["choices"]:
        raise _Bad("one of " + ", ".join(f'"{c}"' for c in meta["choices"]))
    return value


def _bool(meta: Mapping[str, Any], value: Any) -> Any:
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


def _table(meta: Mapping[str, Any], value: Any) -> Any:
    if not isinstance(value, dict):
        raise _Bad("a table of options")
    return value


def _names(meta: Mapping[str, Any], value: Any) -> Any:
    if (
        not isinstance(value, list)
        or not all(isinstance(v, str) and 0 < len(v) <= 256 and "\0" not in v for v in value)
        or len(value) > 1000
    ):
        raise _Bad('a list of names ["alice", "1001"]')
    return tuple(value)


def _int(meta: Mapping[str, Any], value: Any) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(_range_text(meta))
    return value


def _float(meta: Mapping[str, Any], value: Any) -> Any:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Bad(_range_text(meta))
    try:
        result = float(value)  # OverflowError: an integer beyond any float (and TOML's range)
    except OverflowError:
        raise _Bad(_range_text(meta)) from None
    if not math.isfinite(result):
        raise _Bad(_range_text(meta))
    return result


def _size(meta: Mapping[str, Any], value: Any) -> Any:
    try:
        return parse_size(value)
    except (ValueError, OverflowError):  # OverflowError: "999...9TiB" beyond any float
        raise _Bad(_range_text(meta, 'a size in bytes or with a unit ("512KiB", "1MiB")')) from None


def _duration(meta: Mapping[str, Any], value: Any) -> Any:
    try:
        result = parse_duration(value)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond any float
        result = math.nan
    if not math.isfinite(result):  # nan above, or "999...9s" read as inf
        raise _Bad(_range_text(meta, 'a duration ("500ms", "5s", "10m", "1h") or seconds'))
    return result


def _ttl(meta: Mapping[str, Any], value: Any) -> Any:
    """A duration up to ``maximum`` (when set), or FOREVER from -1 or "forever"."""
    high = meta["max"]
    allowed = (
        f"a duration{f' up to {format_duration(high)}' if high is not None else ''} "
        '("30s", "5m"), 0 (unload when idle) or -1 / "forever"'
    )
    if value == "forever" or (type(value) in (int, float) and value == FOREVER):
        return FOREVER
    try:
        result = parse_duration(value)
    except (ValueError, OverflowError):
        raise _Bad(allowed) from None
    if not 0 <= result < math.inf or (high is not None and result > high):
        raise _Bad(allowed)
    return result


# A size budget beyond this is a typo (and "999...9TiB" would not survive parse_size at run time).
_BUDGET_MAX: Final = 1 << 50


def _budget(meta: Mapping[str, Any], value: Any) -> Any:
    """Kept as text: "50%" (resolved against the device's size at run time) or "16GiB"."""
    allowed = (
        'a percent above 0 and up to 100 ("50%") or a size from 1 byte to '
        f'{format_size(_BUDGET_MAX)} ("16GiB")'
    )
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            share = float(value.strip()[:-1])
        except ValueError:
            share = -1.0
        if not 0 < share <= 100:
            raise _Bad(allowed)
        return value.strip()
    try:
        size = parse_size(value)
    except (ValueError, OverflowError):
        raise _Bad(allowed) from None
    if not 1 <= size <= _BUDGET_MAX:  # 0 would refuse every model; a negative one, crash
        raise _Bad(allowed)
    return format_size(size)


_CONVERTERS: Final[dict[str, Callable[[Mapping[str, Any], Any], Any]]] = {
    "str": _string,
    "path": _string,
    "choice": _choice,
    "bool": _bool,
    "table": _table,
    "int": _int,
    "float": _float,
    "size": _size,
    "duration": _duration,
    "ttl": _ttl,
    "budget": _budget,
    "names": _names,
}


def check(meta: Mapping[str, Any], value: Any, path: str | None, key: str) -> Any:
    """One leaf value, converted to its Python form, or ConfigError."""
    try:
        result = _CONVERTERS[meta["kind"]](meta, value)
        low, high = meta["min"], meta["max"]
        if (low is not None and result < low) or (high is not None and result > high):
            raise _Bad(_range_text(meta))
    except _Bad as bad:
        if meta.get("secret"):
            value = redaction.redact_setting(meta["secret"], value)
        raise ConfigError(
            path, key, f"bad value {shown(value)}", value=value, allowed=bad.allowed
        ) from None
    return result


_KIND_WORDS: Final = {
    "int": "an integer",
    "float": "a number",
    "size": "a size",
    "duration": "a duration",
}


def _range_text(meta: Mapping[str, Any], what: str | None = None) -> str:
    what = what or _KIND_WORDS.get(meta["kind"], meta["kind"])
    low, high = meta["min"], meta["max"]
    if low is None or high is None:
        return what
    return f"{what} from {_value_text(meta['kind'], low)} to {_value_text(meta['kind'], high)}"


def _value_text(kind: str, value: float) -> str:
    if kind == "size":
        return format_size(value)
    if kind == "duration":
        return format_duration(value)
    return f"{value:g}"


def shown(value: Any) -> str:
    """A value as it looks in TOML: "text", true, 1.5, nan."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dt.date | dt.time):  # TOML dates and times are written bare
        return value.isoformat()
    return json.dumps(value, default=str)


def toml_default(meta: Mapping[str, Any], value: Any) -> str:
    """A default as one would write it in perfd.toml."""
    if value is None:
        return "{}" if meta["kind"] == "table" else "unset"
    if meta["kind"] == "ttl":
        return '"forever"' if value == FOREVER else f'"{format_duration(value)}"'
    if meta["kind"] == "duration":
        return f'"{format_duration(value)}"'
    if meta["kind"] == "size":
        return f'"{format_size(value)}"'
    if meta["kind"] == "float":
        return f"{value:g}"
    if meta["kind"] == "names":
        return shown(list(value))
    return shown(value)


def to_dict(config: Any, *, redact: bool = True) -> dict[str, Any]:
    """The config as plain data keyed by TOML names; secret values are redacted (per each
    field's ``secret`` mark: perfd.redaction.redact_setting)."""
    out: dict[str, Any] = {}
    for spec in _settings(config):
        value = getattr(config, spec.name)
        if spec.metadata.get("section"):
            out[_key(spec)] = to_dict(value, redact=redact)
        elif "section_map" in spec.metadata:
            out[_key(spec)] = {k: to_dict(v, redact=redact) for k, v in value.items()}
        elif redact and spec.metadata.get("secret"):
            out[_key(spec)] = redaction.redact_setting(spec.metadata["secret"], value)
        else:
            out[_key(spec)] = value
    return out


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted TOML names of the settings that differ between two configs."""
    keys: list[str] = []
    for spec in _settings(old):
        a, b = getattr(old, spec.name), getattr(new, spec.name)
        if spec.metadata.get("section"):
            keys.extend(changed_keys(a, b, prefix + _key(spec) + "."))
        elif "section_map" in spec.metadata:
            for name in sorted(set(a) | set(b)):
                dotted = f"{prefix}{_key(spec)}.{name}"
                if name not in a or name not in b:
                    keys.append(dotted)
                else:
                    keys.extend(changed_keys(a[name], b[name], dotted + "."))
        elif a != b:
            keys.append(prefix + _key(spec))
    return keys


def leaves(config: Any, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field[Any], Any]]:
    """Every leaf setting as (dotted TOML name, field, value)."""
    for spec in _settings(config):
        value = getattr(config, spec.name)
        if spec.metadata.get("section"):
            yield from leaves(value, prefix + _key(spec) + ".")
        elif "section_map" in spec.metadata:
            yield from leaves(spec.metadata["section_map"](), f"{prefix}{_key(spec)}.NAME.")
        else:
            yield prefix + _key(spec), spec, value


def reference_markdown(config: Any) -> str:
    """A table per section: key, type, default, meaning (the body of docs/config.md)."""
    lines: list[str] = []

    def table(obj: Any, name: str, doc: str) -> None:
        rows = [
            f"| `{_key(spec)}` | {spec.metadata['kind']} | "
            f"`{toml_default(spec.metadata, getattr(obj, spec.name))}` | {spec.metadata['doc']} |"
            for spec in _settings(obj)
            if not spec.metadata.get("section") and "section_map" not in spec.metadata
        ]
        if rows:
            lines.append(f"### `[{name}]`" if name else "### Top level")
            if doc:
                lines.extend(["", doc])
            lines.extend(["", "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for spec in _settings(obj):
            child = (name + "." if name else "") + _key(spec)
            if spec.metadata.get("section"):
                table(getattr(obj, spec.name), child, spec.metadata["doc"])
            elif "section_map" in spec.metadata:
                child += "." + spec.metadata["map_name"]
                table(spec.metadata["section_map"](), child, spec.metadata["doc"])

    table(config, "", "")
    return "\n".join(lines)
