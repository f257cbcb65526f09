"""Outgoing webhooks: Standard Webhooks signing.

Where a webhook may be sent, and how to connect there safely: ``dispatcher.netguard``.
"""

from dispatcher.webhooks.signing import (
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    SECRET_PREFIX,
    BadSignature,
    InvalidSecret,
    new_secret,
    sign,
    verify,
)

__all__ = [
    "HEADER_ID",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "SECRET_PREFIX",
    "BadSignature",
    "InvalidSecret",
    "new_secret",
    "sign",
    "verify",
]
