"""structlog setup: JSON lines in production, a readable console in development.

Lines written inside a run carry its context (run id, tenant, provider, hop, attempt)
through ``structlog.contextvars``; the standard library's loggers (uvicorn, dramatiq)
are rendered the same way.

No line carries a credential. The HTTP and cloud client libraries, which log URLs, headers
and signing material at DEBUG (botocore's canonical request holds the session token), are kept
at WARNING whatever the level; and every line, tracebacks included, passes ``redact_secrets``
last, which masks fields named for a secret, credential headers, bearer tokens, Google access
tokens and PEM private keys wherever they show.
"""

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

from dispatcher.jsontext import dumps

_SHARED: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]

#: Loggers that write request lines (URLs), headers or signing material below WARNING.
QUIET_LOGGERS = (
    "httpx",
    "httpcore",
    "uvicorn.access",
    "botocore",
    "boto3",
    "urllib3",
    "google.auth",
    "google.oauth2",
)

REDACTED = "[redacted]"
#: Headers whose value is a credential.
_SECRET_HEADERS = (
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "x-amz-security-token",
    "cookie",
    "set-cookie",
)
#: Event fields (and keys of nested dicts) whose value is a secret, whatever it is.
_SECRET_FIELDS = frozenset(
    {
        *_SECRET_HEADERS,
        "access_token",
        "api_key",
        "assertion",
        "password",
        "private_key",
        "secret",
        "secret_access_key",
        "session_token",
    }
)
#: A credential header with its value, as ``name: value``, ``name=value`` or ``'name': 'value'``.
_HEADER = re.compile(
    rf"""(?i)\b({"|".join(_SECRET_HEADERS)})(['"]?\s*[:=]\s*['"]?)"""
    r"""(?:(bearer|basic|key)\s+)?[^\s'",}\\]+"""
)
#: Every text any of the patterns below can match holds one of these: most texts are ids and
#: names, and one search clears them of all four substitutions.
_MAYBE_SECRET = re.compile(
    "(?i)" + "|".join(map(re.escape, [*_SECRET_HEADERS, "bearer", "ya29.", "private key"]))
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}")
_GOOGLE_TOKEN = re.compile(r"\bya29\.[A-Za-z0-9._-]+")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.DOTALL
)


def redact_text(text: str) -> str:
    """``text`` with credential headers, bearer tokens, Google tokens and private keys masked."""
    if not _MAYBE_SECRET.search(text):
        return text
    text = _PRIVATE_KEY.sub(rf"-----\1PRIVATE KEY {REDACTED}-----", text)
    text = _HEADER.sub(lambda m: f"{m[1]}{m[2]}{m[3] + ' ' if m[3] else ''}{REDACTED}", text)
    text = _BEARER.sub(rf"\1 {REDACTED}", text)
    return _GOOGLE_TOKEN.sub(REDACTED, text)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The structlog processor: secret-named fields masked, every text redacted, nested
    dicts and lists included. Most lines hold only ids and names: one search over all their
    texts at once clears them (a text that could hold a secret still gets every pattern)."""
    texts = [value for value in event_dict.values() if isinstance(value, str)]
    clear = not _MAYBE_SECRET.search("\n".join(texts))
    for name, value in event_dict.items():
        if clear and isinstance(value, str) and name.lower() not in _SECRET_FIELDS:
            continue
        event_dict[name] = _redacted(name, value)
    return event_dict


def _redacted(name: object, value: Any) -> Any:
    if isinstance(name, str) and name.lower() in _SECRET_FIELDS and value is not None:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {key: _redacted(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(None, item) for item in value]
    return value


def _json(event: Any, **options: Any) -> str:
    """One JSON line, by ``jsontext`` (a log line per attempt is a worker's hottest text)."""
    return dumps(event, options.get("default"))


def configure(log_format: str = "console", level: str = "INFO") -> None:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_json)
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,  # last before rendering: tracebacks are text by now
                renderer,
            ],
        )
    )
    # No line shows where it was logged from, or the thread or process: the standard
    # library need not walk the stack for them on every line (its documented optimization).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for quiet in QUIET_LOGGERS:
        logging.getLogger(quiet).setLevel(logging.WARNING)
