"""Log lines never carry a secret: ``redact_secrets``, the processor every line passes last."""

from typing import Any

from dispatcher.log import REDACTED, redact_secrets


def _redact(**fields: Any) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", dict(fields)))


def test_a_line_of_ids_and_names_is_left_as_it_is() -> None:
    line = {"event": "attempt recorded", "run_id": "run_01", "provider": "openai", "hop": 0}
    assert _redact(**line) == line


def test_a_secret_named_field_is_masked_whatever_its_value_looks_like() -> None:
    assert _redact(event="x", api_key="abc", password="p", hop=1) == {
        "event": "x", "api_key": REDACTED, "password": REDACTED, "hop": 1,
    }  # fmt: skip


def test_a_secret_in_one_text_is_masked_and_the_others_kept() -> None:
    """The one search over all of a line's texts sends every text through the patterns."""
    found = _redact(
        event="call failed",
        run_id="run_01",
        error="upstream said: Authorization: Bearer sk-live-0123456789abcdef",
        detail="token ya29.a0AfH6SMBxyz",
    )
    assert found["run_id"] == "run_01" and found["event"] == "call failed"
    assert "sk-live-0123456789abcdef" not in found["error"] and REDACTED in found["error"]
    assert found["detail"] == f"token {REDACTED}"


def test_secrets_in_nested_values_are_masked() -> None:
    found = _redact(
        event="x", headers={"x-api-key": "k-123", "accept": "json"}, args=["Bearer abcdefghijkl"]
    )
    assert found["headers"] == {"x-api-key": REDACTED, "accept": "json"}
    assert found["args"] == [f"Bearer {REDACTED}"]
