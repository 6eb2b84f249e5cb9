"""`patterns.to_re2` gives RE2 patterns that Arrow's kernels match exactly where Python's `re.search` does."""

from __future__ import annotations

import re
import sys
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portability.records import patterns
from portability.records.patterns import to_re2
from tests.helpers.record_batches import SCHEMAS, SPECIAL_CHARS, UTF8, examples

SETTINGS = settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))


def _schema_patterns(node) -> set[str]:
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            found.add(node["pattern"])
        for value in node.values():
            found |= _schema_patterns(value)
    elif isinstance(node, list):
        for value in node:
            found |= _schema_patterns(value)
    return found


SCHEMA_PATTERNS = sorted(_schema_patterns([SCHEMAS.document(path) for path in SCHEMAS._by_path]))
EXTRA_PATTERNS = [
    r"\s", r"\S", r"\d", r"\D+", r"\w+", r"^\W", r"^\d+$", r"^[\w.-]+$", r"[^\s]", r"[^@\s]+@", r"[\s@]",
    r"[\d\s]+$", r"^[^\d]*$", r"[^\w]", r"a$", r"^$", r"$", r"x|y$", r"(a|b)$", r"^(a$)", r"a$|^b", r"[$]", r"\$",
    r"\.$", r"^[é-ü]+$", "😀", "[😀-🙏]", r"a.c", r"^.*$", r"\n$", r"^\n", r"[\t\n\r\f\v]", r"^(?:ab)+$",
    r"^a{2,3}$", r"^[]a]", r"[^]a]", r"[a-]", r"\-\/", r"^\w{1,4}$", "\u00e9", "[\u2028\u00a0]",
    # Constructs the two engines read differently: each must be translated exactly or refused (None).
    r"a$\n", r"(a$)\n", r"(a$|b)\n", r"$^", r"^a{,2}$", r"a{,2}", r"a*+", r"(?>a)b", r"a++b", r"^\w{1,1000}$",
    r"a{1001}",
    # Code points by number: \xhh, \uhhhh, \Uhhhhhhhh (RE2 writes \x{...}); malformed ones are refused.
    r"^[^\x00-\x1f\x7f]+$", r"\u00e9|\x41", r"[\U0001F600-\U0001F64F]", r"\x4", r"\u12", r"\ud800",
]
MATCH_CHARS = [*SPECIAL_CHARS, "b", "c", "x", "y", "z", "Z", "9", "$", "^", "]", "{", "}", ",", "\u00e9", "ü",
               "😀", "🙏", "\u2007", "\u0660", "ǅ"]
TEXTS = st.builds(lambda s, end: s + end, st.text(st.one_of(st.sampled_from(MATCH_CHARS), UTF8), max_size=10),
                  st.sampled_from(["", "", "\n", "\n\n", "\r\n", "\u2028"]))


@cache
def translate(pattern: str) -> str | None:
    return to_re2(pattern)


def assert_same_matches(pattern: str, texts: list[str]) -> None:
    translated = translate(pattern)
    if translated is None:
        return
    got = pc.match_substring_regex(pa.array(texts, pa.string()), translated).to_pylist()
    assert got == [re.search(pattern, text) is not None for text in texts], translated


def test_the_schema_patterns_translate():
    """The fast path judges every pattern the schemas use."""
    assert SCHEMA_PATTERNS
    assert all(to_re2(p) is not None for p in SCHEMA_PATTERNS)


@pytest.mark.parametrize("pattern", SCHEMA_PATTERNS + EXTRA_PATTERNS)
@SETTINGS
@given(texts=st.lists(TEXTS, min_size=1, max_size=20), data=st.data())
def test_to_re2_matches_like_re_search(pattern, texts, data):
    try:
        matching = data.draw(st.lists(st.from_regex(pattern, alphabet=UTF8), max_size=5))
    except Exception:  # noqa: BLE001 - hypothesis cannot generate for every construct; the other texts still run
        matching = []
    assert_same_matches(pattern, texts + matching)


ATOMS = st.one_of(
    st.sampled_from(["a", "b", "A", "0", "-", "_", ".", " ", "é", "😀", "١", "\n", ",", "{", "}", "@"]),
    st.sampled_from([r"\s", r"\S", r"\d", r"\D", r"\w", r"\W", r"\.", r"\$", r"\n", r"\t", r"\v", r"\-", r"\\",
                     r"\^", r"\b", r"\Z", r"\A", r"\]", r"\{", r"\x41", r"\u00e9", r"\'", "^", "$"]),
    st.builds(lambda negate, items: "[" + negate + "".join(items) + "]", st.sampled_from(["", "^"]),
              st.lists(st.sampled_from(["a", "b", "0-9", "a-z", "é-ü", "_", "-", "@", ".", "$", "^", r"\s", r"\d",
                                        r"\w", r"\S", r"\n", " ", "😀", r"\]", r"\\", "[", "&&"]),
                       min_size=1, max_size=4)),
)
QUANTIFIERS = st.sampled_from(["", "", "", "*", "+", "?", "{2}", "{1,3}", "{,2}", "{2,}", "*?", "+?", "??", "*+",
                               "?+", "{1,2}+", "{0}", "{1001}"])


def _regex(children):
    pieces = st.lists(st.builds(lambda a, q: a + q, st.one_of(ATOMS, children), QUANTIFIERS), max_size=4).map("".join)
    alternatives = st.lists(pieces, min_size=1, max_size=3).map("|".join)
    opener = st.sampled_from(["(", "(?:", "(?P<g>", "(?>", "(?=", "(?i:"])
    return st.builds(lambda o, body: o + body + ")", opener, alternatives)


REGEXES = st.recursive(
    st.lists(st.builds(lambda a, q: a + q, ATOMS, QUANTIFIERS), min_size=1, max_size=4).map("".join),
    lambda children: st.one_of(_regex(children), st.lists(children, min_size=2, max_size=3).map("".join),
                               st.lists(children, min_size=2, max_size=3).map("|".join)),
    max_leaves=6,
)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # Python's warning about [ and && inside classes
@settings(SETTINGS, max_examples=examples(1500))
@given(pattern=REGEXES, texts=st.lists(TEXTS, min_size=1, max_size=12))
def test_to_re2_is_exact_or_refuses_for_generated_patterns(pattern, texts):
    try:
        re.compile(pattern)
    except re.error:
        assert to_re2(pattern) is None
        return
    assert_same_matches(pattern, texts + ["", "\n", "a", "a\n", "aa\n"])


@pytest.mark.parametrize("letter", ["s", "d", "w"])
def test_class_members_are_exactly_pythons(letter):
    expected = {c for c in range(sys.maxunicode + 1)
                if not 0xD800 <= c <= 0xDFFF and re.match("\\" + letter, chr(c))}
    got = set()
    for match in re.finditer(r"\\x\{([0-9a-f]+)\}(?:-\\x\{([0-9a-f]+)\})?", patterns._members(letter)):
        start = int(match.group(1), 16)
        got |= set(range(start, int(match.group(2) or match.group(1), 16) + 1))
    assert re.fullmatch(r"(?:\\x\{[0-9a-f]+\}(?:-\\x\{[0-9a-f]+\})?)+", patterns._members(letter))
    assert got == expected
