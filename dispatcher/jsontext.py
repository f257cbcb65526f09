"""JSON text, fast: orjson where it can, the standard library where orjson refuses.

orjson encodes several times faster than ``json`` and writes the same JSON for what the
dispatcher stores and sends (compact, UTF-8 unescaped), but refuses integers beyond 64 bits,
which a tenant's input may hold: those values go through ``json`` instead.
"""

import json
from collections.abc import Callable
from typing import Any

import orjson

Default = Callable[[Any], Any] | None


def dumps_bytes(value: Any, default: Default = None) -> bytes:
    """``value`` as compact UTF-8 JSON; ``default`` turns what JSON has no type for into
    something it has."""
    try:
        return orjson.dumps(value, default=default)
    except orjson.JSONEncodeError:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=default)
        return text.encode()


def dumps(value: Any, default: Default = None) -> str:
    """``value`` as compact JSON text."""
    return dumps_bytes(value, default).decode()
