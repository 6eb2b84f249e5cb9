"""Sharing out an upload's part numbers among the files of the command's archive."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from portability.archive.parts import FINAL_NUMBERS, MAX_PARTS, ROUTER_NUMBERS, allot_numbers

KINDS = ["csv", "jsonl", "errors"]


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=12))
def test_each_file_gets_its_own_numbers_in_archive_order_with_room_around_them(weights):
    categories = [f"c{i}" for i in range(len(weights))]
    files = [(category, kind) for category in categories for kind in KINDS]
    ranges = allot_numbers(files, dict(zip(categories, weights, strict=True)))
    assert list(ranges) == files
    previous_end = 1
    for file in files:
        numbers = ranges[file]
        assert numbers.start - previous_end >= ROUTER_NUMBERS  # packaging's parts before this file's sent parts
        assert len(numbers) >= 64
        previous_end = numbers.stop
    assert MAX_PARTS + 1 - previous_end >= FINAL_NUMBERS  # the parts after every sent part


def test_numbers_follow_the_estimated_rows():
    ranges = allot_numbers([("contacts", "csv"), ("lists", "csv")], {"contacts": 10_000_000, "lists": 20})
    assert len(ranges[("contacts", "csv")]) > 100 * len(ranges[("lists", "csv")])
