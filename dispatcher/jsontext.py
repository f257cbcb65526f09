"""JSON text, fast: orjson where it can, the standard library where orjson refuses.

orjson encodes several times faster than ``json`` and writes the same JSON for what the
dispatcher stores and sends (compact, UTF-8 unescaped), but refuses integers beyond 64 bits,
which a tenant's input may hold: those values go through ``json`` instead.
"""

import json
from typing import Any

import orjson


def dumps_bytes(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def dumps(value: Any) -> str:
    """``value`` as compact JSON text."""
    return dumps_bytes(value).decode()
