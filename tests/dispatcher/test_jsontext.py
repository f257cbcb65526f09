"""Fast JSON text: the same JSON the standard library writes, compact, for every value."""

import json

from dispatcher.jsontext import dumps, dumps_bytes, loads


def test_it_writes_what_the_standard_library_reads_back() -> None:
    value = {"a": [1, 2.5, None, True], "é": "ü", "n": 2**63 - 1}
    assert json.loads(dumps(value)) == value
    assert dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_integers_beyond_64_bits_are_written_too() -> None:
    value = {"big": 2**70, "small": -(2**64)}
    assert json.loads(dumps_bytes(value)) == value


def test_what_json_has_no_type_for_goes_through_default_either_way() -> None:
    value = {"when": object(), "big": 2**70, 1: "non-text key"}
    written = json.loads(dumps(value, default=lambda _: "converted"))
    assert written == {"when": "converted", "big": 2**70, "1": "non-text key"}


def test_integers_beyond_64_bits_are_read_back_exactly() -> None:
    """orjson reads them as floats, losing digits: they are read by the standard library."""
    value = {"big": 2**70 + 1, "small": -(2**64) - 3, "text": "12345678901234567890123"}
    assert loads(dumps_bytes(value)) == value and loads(dumps(value)) == value
    assert type(loads(b"[18446744073709551617]")[0]) is int
    assert loads(b'{"a": [1, 2.5, null, true], "n": 9007199254740993}') == {
        "a": [1, 2.5, None, True], "n": 9007199254740993,
    }  # fmt: skip


def test_what_is_not_json_is_a_value_error() -> None:
    for text in (b"{", b"not json", b"[1,]"):
        try:
            loads(text)
        except ValueError:
            continue
        raise AssertionError(text)
