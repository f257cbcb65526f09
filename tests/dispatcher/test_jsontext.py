"""Fast JSON text: the same JSON the standard library writes, compact, for every value."""

import json

from dispatcher.jsontext import dumps, dumps_bytes


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
