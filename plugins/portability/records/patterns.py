"""Python `re` patterns (what `jsonschema` runs) rewritten for RE2 (what Arrow's kernels run).

The two engines read some constructs differently: Python's `\\s`, `\\d` and `\\w` are Unicode
classes while RE2's are ASCII, and Python's `$` also matches before a final newline. The
translation spells those out exactly, with the classes taken from the running Python itself,
and returns None for anything it cannot translate exactly, so the caller falls back to the
full validator instead of guessing.
"""

from __future__ import annotations

import re
import sys
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc

# What sre tests for `\\s`, `\\d`, `\\w` on str patterns (Py_UNICODE_ISSPACE, ISDECIMAL, ISALNUM or '_').
_CLASS_ESCAPES = {"s": str.isspace, "d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_"}
_UNSUPPORTED_ESCAPES = set("bBZAG0123456789pPN")  # anchors, backreferences, RE2-only or ambiguous escapes
_CODE_POINT_ESCAPES = {"x": 2, "u": 4, "U": 8}  # \xhh, \uhhhh, \Uhhhhhhhh: RE2 spells them \x{...}
_PLAIN_ESCAPES = set(".^$*+?{}[]()|\\/-")
_UNSUPPORTED_GROUPS = ("(?=", "(?!", "(?<=", "(?<!", "(?P=", "(?#", "(?(")


@cache
def _members(letter: str) -> str:
    """The code points Python's `\\s`/`\\d`/`\\w` match, as an RE2 class body of ranges."""
    test = _CLASS_ESCAPES[letter]
    ranges, start, previous = [], None, None
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:  # surrogates never occur in UTF-8 text
            continue
        if test(chr(code)):
            if start is None:
                start = code
            elif code != previous + 1:
                ranges.append((start, previous))
                start = code
            previous = code
    if start is not None:
        ranges.append((start, previous))
    return "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)


# How a schema ends a match at the very end of the text: `$` would also match before a final newline in
# Python's re (jsonschema's), and JSON Schema's own regex flavour has no \z. RE2 spells it \z.
END_OF_TEXT = r"(?![\s\S])"


def to_re2(pattern: str) -> str | None:
    """An RE2 pattern matching exactly the strings `re.search(pattern, s)` matches, or None."""
    try:
        re.compile(pattern)
    except re.error:
        return None
    if pattern.endswith(END_OF_TEXT) and not pattern.endswith("\\" + END_OF_TEXT):
        rest = to_re2(pattern[:-len(END_OF_TEXT)])
        return None if rest is None else f"(?:{rest})\\z"
    if any(group in pattern for group in _UNSUPPORTED_GROUPS) or re.search(r"\(\?[aiLmsux-]", pattern):
        return None
    out, in_class, i, depth = [], False, 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if i + 1 >= len(pattern):
                return None
            escaped = pattern[i + 1]
            i += 2
            if escaped.lower() in _CLASS_ESCAPES:
                members = _members(escaped.lower())
                if in_class:
                    if escaped.isupper():
                        return None  # a negated class inside a class has no RE2 spelling
                    out.append(members)
                else:
                    out.append(f"[{'^' if escaped.isupper() else ''}{members}]")
            elif escaped in _CODE_POINT_ESCAPES:
                digits = pattern[i:i + _CODE_POINT_ESCAPES[escaped]]
                if len(digits) != _CODE_POINT_ESCAPES[escaped] or not all(c in "0123456789abcdefABCDEF"
                                                                            for c in digits):
                    return None
                if int(digits, 16) > sys.maxunicode or 0xD800 <= int(digits, 16) <= 0xDFFF:
                    return None  # not a code point RE2 (UTF-8) can match
                out.append(f"\\x{{{int(digits, 16):x}}}")
                i += len(digits)
            elif escaped in _UNSUPPORTED_ESCAPES:
                return None
            elif escaped in "tnrfv":
                out.append({"t": r"\t", "n": r"\n", "r": r"\r", "f": r"\f", "v": r"\x0b"}[escaped])
            elif escaped in _PLAIN_ESCAPES:
                out.append("\\" + escaped)
            else:
                return None
            continue
        if in_class:
            if char == "]":
                in_class = False
            elif char == "[":
                return None  # Python warns about nested sets; RE2 reads them differently
            out.append(char)
        elif char == "[":
            in_class = True
            out.append(char)
            # A ']' right after '[' or '[^' is a literal in both engines.
            if pattern[i + 1:i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1:i + 2] == "]":
                out.append(r"\]")
                i += 1
        elif char == "$":
            # Python's $ also matches just before a final newline; consuming that newline is only
            # exact when nothing may follow the $ (the end of the pattern or of a top-level branch).
            rest = pattern[i + 1:]
            if rest.lstrip(")") and not (depth == 0 and rest.startswith("|")):
                return None
            out.append(r"(?:\n?\z)")
        elif char == "{" and pattern[i + 1:i + 2] == ",":
            return None  # Python reads x{,n} as x{0,n}; RE2 reads it as literal text
        elif char == "." or char.isascii():
            depth += {"(": 1, ")": -1}.get(char, 0)
            out.append(char)
        else:
            out.append(f"\\x{{{ord(char):x}}}")
        i += 1
    if in_class:
        return None
    translated = "".join(out)
    try:  # RE2 lacks some of Python's constructs (possessive quantifiers, atomic groups) and limits sizes
        pc.match_substring_regex(pa.array([""], pa.string()), translated)
    except pa.ArrowInvalid:
        return None
    return translated
