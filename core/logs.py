"""Logging for every ``loratrain`` command: one line per event, in ``key=value`` form (logfmt), on stderr.

A line reads ``time=… level=info logger=loratrain.worker event="Job done" job=… try=1 seconds=2.4``:
the message is ``event``, fields passed with ``extra=`` follow it, and a traceback comes last as ``exc=`` (its
line breaks written ``\\n``), so a log collector can split, filter and count lines without guessing.
Secrets never reach a line: every ``SecretStr`` setting, any password in a URL and any key in a query string
are replaced by ``[hidden]`` before the line is written. Libraries (arq, discord.py, httpx, paramiko,
aiosqlite) say only warnings and errors unless ``--verbose``; everything else says what it does (INFO).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from pydantic import SecretStr

from core.settings import Settings

HIDDEN = "[hidden]"
LIBRARIES = ("arq", "discord", "httpx", "paramiko", "aiosqlite")
URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)
QUERY_SECRET = re.compile(r"([?&](?:api_?key|key|token|access_token|password|secret)=)[^&\s\"']+", re.IGNORECASE)
# What every LogRecord has: the rest came in through ``extra=`` and is written as fields.
STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}
BARE = re.compile(r"[^\s\"=\\]+")  # a value that needs no quotes


def secrets_of(settings: Settings) -> set[str]:
    """Every secret the settings hold: the ``SecretStr`` fields (found by type, so a new key is covered
    without a change here) and the password of any address (a Redis URL may carry one)."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            found |= {value.get_secret_value(), value.get_secret_value().strip()}
        elif isinstance(value, str) and "://" in value:
            found.add(urlsplit(value).password or "")
    return {secret for secret in found if secret}


def hide_passwords(text: str) -> str:
    """``redis://:pw@host`` → ``redis://:[hidden]@host``, and ``?api_key=…`` likewise: for any text shown."""
    return QUERY_SECRET.sub(rf"\g<1>{HIDDEN}", URL_PASSWORD.sub(rf"\g<1>{HIDDEN}@", text))


class Redact(logging.Filter):
    """Blanks secrets out of a record — its message, its fields and its traceback — before it is written."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)  # a longer secret first, should one hold another

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, HIDDEN)
        return hide_passwords(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # arguments that don't fit the message: keep both, as text
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = self.redact(message), None
        for key, value in list(vars(record).items()):
            if key not in STANDARD and not isinstance(value, bool | int | float | None):
                setattr(record, key, self.redact(str(value)))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def value(item: object) -> str:
    """One logfmt value: quoted (with ``\\``, ``"`` and line breaks escaped) unless it is one plain word."""
    if isinstance(item, bool):
        return str(item).lower()
    text = str(item)
    if BARE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class Logfmt(logging.Formatter):
    """One line per record: time (UTC), level, logger, event, then the record's own fields."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        fields: dict[str, object] = {
            "time": stamp.replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields |= {k: v for k, v in vars(record).items() if k not in STANDARD and k not in fields and v is not None}
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = record.stack_info
        return " ".join(f"{key}={value(item)}" for key, item in fields.items())


class Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when each line is written, not as it was at setup (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


def setup(verbose: bool, settings: Settings) -> None:
    """Send every logger's lines through one logfmt handler on stderr, secrets hidden; DEBUG for all with
    ``verbose``, else INFO for loratrain and WARNING for the libraries. Calling it again replaces the handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, Stderr)]:
        root.removeHandler(old)
    handler = Stderr()
    handler.setFormatter(Logfmt())
    handler.addFilter(Redact(secrets_of(settings)))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
