"""Identifiers that sort by creation time (ULID layout), so ``ORDER BY id`` is newest-first-able."""

import base64
import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
#: RFC 4648 base32 digits -> the digits of the same value in Crockford's lower-case alphabet.
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())


def new_id(prefix: str) -> str:
    """``<prefix>_`` + 48 bits of milliseconds + 80 random bits, in 26 Crockford base32 chars:
    the 128 bits read as a 130-bit number (so the first char holds 3 bits)."""
    millis = time.time_ns() // 1_000_000
    value = millis << 80 | int.from_bytes(os.urandom(10), "big")
    return f"{prefix}_{encode(value)}"


def encode(value: int) -> str:
    """A 128-bit number as 26 base32 chars, most significant first (the stdlib encoder reads
    5-bit groups from the left, so the number is placed 2 bits in: 2 + 128 + 6 bits = 17 bytes)."""
    return base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(_CROCKFORD).decode()
