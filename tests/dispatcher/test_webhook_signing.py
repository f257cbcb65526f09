"""Standard Webhooks signing, checked against the reference ``standardwebhooks`` package."""

import base64
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatcher.webhooks import (
    SECRET_PREFIX,
    BadSignature,
    InvalidSecret,
    new_secret,
    sign,
    verify,
)

BODY = b'{"type":"run.succeeded","data":{"id":"run_01"}}'
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def _now() -> int:
    return int(time.time())


def test_new_secret_is_whsec_and_base64_of_32_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    assert len(base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)) == 32
    assert new_secret() != secret


def test_new_secret_takes_24_to_32_bytes_only() -> None:
    assert len(base64.b64decode(new_secret(24).removeprefix(SECRET_PREFIX))) == 24
    with pytest.raises(ValueError, match="24 to 32"):
        new_secret(16)


def test_headers_carry_id_integer_timestamp_and_one_v1_signature_per_secret() -> None:
    headers = sign(MSG_ID, 1_700_000_000, BODY, [new_secret(), new_secret()])
    assert headers["webhook-id"] == MSG_ID
    assert headers["webhook-timestamp"] == "1700000000"
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)


def test_reference_library_accepts_what_we_sign() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, _now(), BODY, [secret])
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "run.succeeded",
        "data": {"id": "run_01"},
    }


def test_during_rotation_reference_accepts_with_the_old_or_the_new_secret() -> None:
    old, new = new_secret(), new_secret()
    headers = sign(MSG_ID, _now(), BODY, [old, new])
    Webhook(old).verify(BODY, headers, json_parse=False)
    Webhook(new).verify(BODY, headers, json_parse=False)


def test_reference_rejects_a_tampered_body() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, _now(), BODY, [secret])
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(secret).verify(BODY.replace(b"succeeded", b"failed"), headers)


def test_reference_rejects_a_wrong_secret() -> None:
    headers = sign(MSG_ID, _now(), BODY, [new_secret()])
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        Webhook(new_secret()).verify(BODY, headers)


def test_reference_rejects_a_stale_timestamp() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, _now() - 600, BODY, [secret])
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, headers)


def test_verify_accepts_what_the_reference_library_signs() -> None:
    secret = new_secret()
    stamp = datetime.now(UTC).replace(microsecond=0)
    signature = Webhook(secret).sign(MSG_ID, stamp, BODY.decode())
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(int(stamp.timestamp())),
        "webhook-signature": signature,
    }
    verify(BODY, headers, [secret])


def test_verify_accepts_either_secret_of_a_rotation_and_any_header_case() -> None:
    old, new = new_secret(), new_secret()
    headers = {k.upper(): v for k, v in sign(MSG_ID, _now(), BODY, [old, new]).items()}
    verify(BODY, headers, [new])
    verify(BODY, headers, [old])


def test_verify_rejects_a_tampered_body() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, _now(), BODY, [secret])
    with pytest.raises(BadSignature, match="no signature matches"):
        verify(BODY + b" ", headers, [secret])


def test_verify_rejects_a_wrong_secret() -> None:
    headers = sign(MSG_ID, _now(), BODY, [new_secret()])
    with pytest.raises(BadSignature, match="no signature matches"):
        verify(BODY, headers, [new_secret()])


def test_verify_rejects_a_changed_id() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, _now(), BODY, [secret]) | {"webhook-id": "msg_other"}
    with pytest.raises(BadSignature, match="no signature matches"):
        verify(BODY, headers, [secret])


@pytest.mark.parametrize("age_s", [301, -301], ids=["stale", "future"])
def test_verify_rejects_a_timestamp_outside_the_tolerance(age_s: int) -> None:
    secret = new_secret()
    headers = sign(MSG_ID, 1_700_000_000, BODY, [secret])
    with pytest.raises(BadSignature, match="tolerance"):
        verify(BODY, headers, [secret], now=1_700_000_000 + age_s)


@pytest.mark.parametrize("age_s", [300, -300], ids=["oldest", "newest"])
def test_verify_accepts_a_timestamp_at_the_edge_of_the_tolerance(age_s: int) -> None:
    secret = new_secret()
    headers = sign(MSG_ID, 1_700_000_000, BODY, [secret])
    verify(BODY, headers, [secret], now=1_700_000_000 + age_s)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_a_missing_header(header: str) -> None:
    secret = new_secret()
    headers = sign(MSG_ID, _now(), BODY, [secret])
    del headers[header]
    with pytest.raises(BadSignature, match=f"missing header {header}"):
        verify(BODY, headers, [secret])


def test_verify_rejects_a_timestamp_that_is_not_integer_seconds() -> None:
    secret = new_secret()
    headers = sign(MSG_ID, _now(), BODY, [secret])
    headers["webhook-timestamp"] += ".5"
    with pytest.raises(BadSignature, match="integer seconds"):
        verify(BODY, headers, [secret])


@pytest.mark.parametrize(
    "secret",
    [
        "c2VjcmV0LXdpdGhvdXQtcHJlZml4LTI0Ynl0ZXM=",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(b"short").decode(),
    ],
    ids=["no-prefix", "not-base64", "too-short"],
)
def test_malformed_secret_is_refused_without_quoting_it(secret: str) -> None:
    with pytest.raises(InvalidSecret) as caught:
        sign(MSG_ID, _now(), BODY, [secret])
    assert secret.removeprefix(SECRET_PREFIX) not in str(caught.value)


def test_sign_refuses_one_bare_string_for_the_secret_list() -> None:
    with pytest.raises(TypeError, match="not one string"):
        sign(MSG_ID, _now(), BODY, new_secret())


def test_sign_refuses_an_empty_secret_list() -> None:
    with pytest.raises(InvalidSecret, match="no secret"):
        sign(MSG_ID, _now(), BODY, [])


@pytest.mark.parametrize("msg_id", ["", "msg.1", "msg 1", "msg\n1"])
def test_sign_refuses_an_id_that_could_make_signatures_ambiguous(msg_id: str) -> None:
    with pytest.raises(ValueError, match="webhook id"):
        sign(msg_id, _now(), BODY, [new_secret()])
