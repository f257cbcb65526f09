"""Run ids: 26 Crockford base32 chars after the prefix, ordered by their millisecond."""

import time

from dispatcher.ids import encode, new_id


def test_the_encoding_is_the_number_in_base32_most_significant_first() -> None:
    assert encode(0) == "0" * 26
    assert encode(1) == "0" * 25 + "1"
    assert encode(31) == "0" * 25 + "z"
    assert encode(32) == "0" * 24 + "10"
    assert encode(2**128 - 1) == "7" + "z" * 25  # 128 bits in 130: the first char holds 3


def test_ids_made_in_later_milliseconds_sort_after() -> None:
    earlier = new_id("run")
    time.sleep(0.002)
    later = new_id("run")
    assert earlier.startswith("run_") and len(earlier) == len("run_") + 26
    assert earlier < later
