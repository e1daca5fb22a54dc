"""Durations in Consul's (Go's) notation: "500ms", "15s", "1m30s"; a bare number means seconds."""

import re

from .errors import UsageError

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BARE_NUMBER = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)$")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str, what: str = "duration") -> float:
    """Return seconds, or raise UsageError naming *what* and the accepted forms."""
    s = str(text).strip()
    if _BARE_NUMBER.match(s):
        value = float(s)
    else:
        pos, value = 0, 0.0
        for m in _PART.finditer(s):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(s) or not s:
            raise UsageError(f"invalid {what} {text!r}: use a number of seconds or a form like 500ms, 15s, 1m30s")
    return value


def format_duration(seconds: float) -> str:
    """The shortest Consul-style text for *seconds* (Consul accepts "1500ms" where "1.5s" is ambiguous)."""
    ms = round(seconds * 1000)
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"
