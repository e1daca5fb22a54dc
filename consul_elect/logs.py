"""Log lines that can be attributed and parsed, and that never carry a secret.

Every line names the candidate (several run side by side in a demo, a shared journal, a pod's
logs): on a terminal `name[pid]: message` through rich; otherwise one plain line
`<time> consul-elect[<pid>] <LEVEL> <name>: <message>`; with `--log-format json`, one JSON
object per line for log pipelines. The ACL token is replaced by `<token>` in every line, as
the last line of defence behind the messages that never include it in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
import time

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)


class _ScrubSecrets(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "<token>")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg, record.args = self.scrub(record.getMessage()), None
        return True


_SCRUB = _ScrubSecrets()


def add_secret(secret: str) -> None:
    """Never let *secret* reach a log line (or a message passed through scrub())."""
    if secret:
        _SCRUB.secrets.add(secret)


def scrub(text: str) -> str:
    return _SCRUB.scrub(text)


class _JSONFormatter(logging.Formatter):
    def __init__(self, name: str, key: str | None) -> None:
        super().__init__()
        self.candidate = name
        self.key = key

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "name": self.candidate,
            "key": self.key,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


_JSON_FINAL: _JSONFormatter | None = None


def final_error(message: str, code: int) -> None:
    """The line that says why the process exits: plain `consul-elect: ...` on stderr, or one more
    JSON object (with the exit code) when the log format is JSON, so a log pipeline keeps it."""
    message = scrub(message)
    if _JSON_FINAL is None:
        print(f"consul-elect: {message}", file=sys.stderr)
        return
    _json_last_line(logging.ERROR, message, code)


def final_exit(code: int) -> None:
    """With the JSON log format, the way out always ends with a line carrying the exit code (an
    error's is final_error's); plain text says nothing more when all went as asked."""
    if _JSON_FINAL is not None:
        _json_last_line(logging.INFO, f"exiting with status {code}", code)


def _json_last_line(level: int, message: str, code: int) -> None:
    record = logging.LogRecord("consul_elect", level, __file__, 0, message, None, None)
    doc = json.loads(_JSON_FINAL.format(record))
    print(json.dumps({**doc, "exit_code": code}), file=sys.stderr)


def setup(name: str, verbose: int = 0, quiet: int = 0, fmt: str = TEXT, key: str | None = None) -> None:
    global _JSON_FINAL
    level = logging.INFO - 10 * verbose + 10 * quiet
    root = logging.getLogger("consul_elect")
    root.setLevel(max(logging.DEBUG, level))
    if fmt == JSON:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JSONFormatter(name, key))
        _JSON_FINAL = _JSONFormatter(name, key)
    elif sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False,
                              log_time_format="%H:%M:%S.%f")
        handler.setFormatter(logging.Formatter(f"{_percent_safe(name)}[%(process)d]: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s.%(msecs)03d consul-elect[%(process)d] %(levelname)s {_percent_safe(name)}: %(message)s",
            "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_SCRUB)
    root.handlers[:] = [handler]
    root.propagate = False


def _percent_safe(text: str) -> str:
    return text.replace("%", "%%")
