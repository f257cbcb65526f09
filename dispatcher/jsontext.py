"""JSON text, fast: orjson where it can, the standard library where orjson cannot be exact.

orjson encodes and decodes several times faster than ``json`` and writes the same JSON for
what the dispatcher stores and sends (compact, UTF-8 unescaped), but not integers beyond 64
bits, which a tenant's input or a provider's answer may hold: it refuses to write them, and
reads them as floats, silently losing digits. Such values go through ``json`` instead.
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


#: Every integer orjson would read as a float has at least 19 digits in a row. A text is
#: looked at for them with its digits as "0" and all else as " " (one C pass each: a regular
#: expression would cost more than orjson's whole parse).
_DIGITS = bytes(ord("0") if chr(byte).isdigit() and byte < 128 else ord(" ") for byte in range(256))
_LONG_NUMBER = b"0" * 19


def loads(text: str | bytes) -> Any:
    """The value of JSON ``text``, every integer exact; ``ValueError`` if it is not JSON."""
    data = text.encode() if isinstance(text, str) else text
    if _LONG_NUMBER in data.translate(_DIGITS):
        return json.loads(data)
    return orjson.loads(data)
