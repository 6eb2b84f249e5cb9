"""Column-at-a-time rendering of staged Arrow batches into the archive's text forms.

Every function takes whole Arrow arrays and returns Arrow arrays, so the hot path runs in
Arrow's C++ kernels (which release the GIL) with no Python object per row. The same text is
what the validator checks, what JSON Lines holds and what the CSV cell shows, so the three
can never disagree.
"""

from __future__ import annotations

import json
from functools import cache

import pyarrow as pa
import pyarrow.compute as pc

from portability.records.schemas import BOOLEAN, INTEGER, JSON, NUMBER, STRING, STRING_LIST, TIMESTAMP, Column

# JSON text must escape '"', '\' and the C0 controls; nothing else needs it (ensure_ascii=False).
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'
_SHORT_ESCAPES = {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
# OWASP CSV injection: a cell starting with one of these runs as a formula in a spreadsheet...
FORMULA_START = "^[=+\\-@\\t\\r]"
# ...unless it is a plain (ASCII) number, which spreadsheets read as a number.
PLAIN_NUMBER = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_SCAN_BYTES = 64 * 1024
_TIMESTAMP_TEXT_LENGTH = len("2024-01-02 03:04:05.000006")
# PostgreSQL's 'infinity' and '-infinity' are the int64 extremes counted from 2000; the ADBC driver
# shifts them to 1970 and they wrap around to these two values, aeons before any real timestamp.
_INFINITIES = {-9222425352054775809: "infinity", -9222425352054775808: "-infinity"}


def timestamp_text(array: pa.Array) -> pa.Array:
    """RFC 3339 in UTC with microseconds, `YYYY-MM-DDTHH:MM:SS.ffffffZ`; nulls stay null.

    Arrow's cast of a naive timestamp is much faster than strftime per value; its text only needs the
    'T' and the 'Z'. Years outside 0000-9999 render longer and the infinities as words; they
    and year 0000 fail the schema's pattern, so the record is quarantined showing the source's value.
    """
    import numpy as np

    naive = pc.cast(array, pa.timestamp("us")) if array.type.tz else array
    text = pc.cast(pc.fill_null(naive, 0), pa.string())
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int32, count=len(text) + 1, offset=text.offset * 4)
    if len(text) and np.all(np.diff(offsets) == _TIMESTAMP_TEXT_LENGTH):
        width = _TIMESTAMP_TEXT_LENGTH + 1
        data = np.frombuffer(text.buffers()[2], dtype=np.uint8, count=offsets[-1] - offsets[0], offset=offsets[0])
        out = np.empty((len(text), width), dtype=np.uint8)
        out[:, :-1] = data.reshape(len(text), _TIMESTAMP_TEXT_LENGTH)
        out[:, 10] = ord("T")
        out[:, -1] = ord("Z")
        new_offsets = np.arange(0, len(text) * width + 1, width, dtype=np.int32)
        rendered = pa.StringArray.from_buffers(len(text), pa.py_buffer(new_offsets), pa.py_buffer(out))
    else:  # unusual years: the slower general path
        rendered = pc.binary_join_element_wise(pc.replace_substring(text, " ", "T", max_replacements=1), "Z", "")
        micros = pc.cast(naive, pa.int64())
        for value, word in _INFINITIES.items():
            rendered = pc.if_else(pc.equal(micros, value), word, rendered)
    return pc.if_else(pc.is_valid(array), rendered, pa.scalar(None, pa.string()))


def text_bytes(lines: pa.Array):
    """The concatenated text of a string array, without copying it into Python objects."""
    import numpy as np

    if not len(lines):
        return b""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]]


def may_contain(array: pa.Array, *, controls: bool = False, chars: bytes = b"") -> bool:
    """Whether any string may hold a C0 control (with `controls`) or one of `chars` (ASCII).

    One pass of numpy over the column's bytes, much cheaper than a regex per string:
    it spares the regex in the common case where no string needs it. In UTF-8 these bytes
    only ever stand for those characters.
    """
    import numpy as np

    if array.type != pa.string():
        return True
    data = np.frombuffer(text_bytes(array), np.uint8)
    # In cache-sized chunks, so the first hit ends the scan and each byte is loaded once for all tests.
    for start in range(0, len(data), _SCAN_BYTES):
        chunk = data[start:start + _SCAN_BYTES]
        hit = chunk < 0x20 if controls else np.zeros(len(chunk), np.bool_)
        for char in chars:
            hit |= chunk == char
        if hit.any():
            return True
    return False


def json_string(array: pa.Array) -> pa.Array:
    """Each string as a JSON string literal (quotes included), exactly as `json.dumps(ensure_ascii=False)`."""
    array = unwrapped(array)
    if not may_contain(array, controls=True, chars=b'"\\'):
        return pc.binary_join_element_wise('"', array, '"', "")
    needs = pc.fill_null(pc.match_substring_regex(array, _NEEDS_ESCAPE), False)
    if pc.any(needs).as_py():
        escaped = pc.filter(array, needs)
        # Each replacement copies the strings: only those of characters they hold (a huge value costs one
        # copy per replacement, and several such copies of it would be in memory at once).
        for char, escape in (("\\", "\\\\"), ('"', '\\"'), *_SHORT_ESCAPES.items()):
            if may_contain(escaped, chars=char.encode()):
                escaped = pc.replace_substring(escaped, char, escape)
        if may_contain(escaped, controls=True):
            for code in range(0x20):
                if chr(code) not in _SHORT_ESCAPES and may_contain(escaped, chars=bytes([code])):
                    escaped = pc.replace_substring(escaped, chr(code), f"\\u{code:04x}")
        array = pc.replace_with_mask(array, needs, escaped)
        del escaped
    return pc.binary_join_element_wise('"', array, '"', "")


def unwrapped(array: pa.Array) -> pa.Array:
    """One plain array: an extension array (arrow.json) as its storage, chunks combined."""
    if isinstance(array.type, pa.BaseExtensionType):
        array = array.storage
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return array


class RenderedBatch:
    """A staged batch with each column's text computed at most once, shared by checks and writers."""

    def __init__(self, batch: pa.RecordBatch, columns: list[Column]):
        self.batch, self.columns = batch, columns
        self._text: dict[int, pa.Array] = {}
        self._json: dict[int, pa.Array] = {}

    @property
    def num_rows(self) -> int:
        return self.batch.num_rows

    def filter(self, mask: pa.Array) -> RenderedBatch:
        """Only the rows where mask is true, keeping the text already computed."""
        return self._derived(lambda array: pc.filter(array, mask))

    def take(self, rows: list[int]) -> RenderedBatch:
        indices = pa.array(rows, pa.int64())
        return self._derived(lambda array: pc.take(array, indices))

    def _derived(self, select) -> RenderedBatch:
        batch = pa.RecordBatch.from_arrays([select(c) for c in self.batch.columns], schema=self.batch.schema)
        derived = RenderedBatch(batch, self.columns)
        derived._text = {i: select(a) for i, a in self._text.items()}
        derived._json = {i: select(a) for i, a in self._json.items()}
        return derived

    def text(self, index: int) -> pa.Array:
        """A string-typed column as plain text: strings, timestamps rendered, JSON as its source text."""
        if index not in self._text:
            array = self.batch.column(index)
            is_timestamp = self.columns[index].kind == TIMESTAMP
            self._text[index] = timestamp_text(array) if is_timestamp else unwrapped(array)
        return self._text[index]

    def json(self, index: int) -> pa.Array:
        """One column as JSON value text; null for nulls (the caller writes `null`)."""
        if index not in self._json:
            self._json[index] = self._render_json(index)
        return self._json[index]

    def _render_json(self, index: int) -> pa.Array:
        kind = self.columns[index].kind
        if kind in (STRING, TIMESTAMP):
            return json_string(self.text(index))
        if kind in (INTEGER, BOOLEAN, NUMBER):
            return pc.cast(self.batch.column(index), pa.string())
        if kind == JSON:
            # The source's own JSON text, kept exactly; raw line breaks can only be whitespace
            # between tokens in valid JSON, so a space keeps the value and the one-line format.
            text = self.text(index)
            if not isinstance(self.batch.column(index).type, pa.JsonType):
                text = _json_or_string(text)
            if may_contain(text, chars=b"\n\r") and pc.any(pc.match_substring_regex(text, "[\n\r]")).as_py():
                text = pc.replace_substring_regex(text, "[\n\r]", " ")
            return text
        if kind == STRING_LIST:
            return string_list_json(self.batch.column(index))
        raise ValueError(f"no JSON rendering for column kind {kind!r}")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str, **options):
    """`json.loads` as the JSON standard has it: NaN and Infinity are refused, and nesting too deep
    for Python's recursion is a ValueError like any other unreadable value, not a crash."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, **options)
    except RecursionError:
        raise ValueError("nested too deeply to read") from None


def _json_or_string(text: pa.Array) -> pa.Array:
    """Text not known to be JSON, with the values that do not parse as JSON strings of themselves.

    Only quarantined records hold such values (the validator parses the same text the same way),
    and their lines go to the errors file, which must stay JSON Lines.
    """
    def parses(value: str | None) -> bool:
        if value is None:
            return True
        try:
            parse_json(value)
        except ValueError:
            return False
        return True

    parsed = pa.array([parses(value) for value in text.to_pylist()], pa.bool_())
    if pc.all(parsed).as_py():
        return text
    return pc.if_else(parsed, text, json_string(text))


def string_list_json(array: pa.Array) -> pa.Array:
    """list<string> as JSON array text: `["a","b"]`, `[]`; null lists stay null."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    values = list_items(array)
    items = json_string(pc.fill_null(values, "")).cast(pa.string())
    # Null items (schema violations, quarantined anyway) render as null like json.dumps would.
    items = pc.if_else(pc.is_valid(values), items, "null")
    offsets = pc.subtract(array.offsets, array.offsets[0])
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, items), ",")
    return pc.if_else(pc.is_valid(array), pc.binary_join_element_wise("[", joined, "]", ""),
                      pa.scalar(None, pa.string()))


def list_items(array: pa.Array) -> pa.Array:
    """Every item the offsets of a list array span, so that `offsets - offsets[0]` index them.

    Not `flatten()`: it drops the items behind null lists (a null list may span items in valid
    Arrow), which would shift the items of every later row.
    """
    start = array.offsets[0].as_py()
    return array.values.slice(start, array.offsets[-1].as_py() - start)


def json_lines(rendered: RenderedBatch) -> pa.Array:
    """One JSON object per row, keys in schema order, each ending with a newline."""
    parts: list = []  # literal text (str) between the columns' arrays

    def literal(text: str) -> None:
        if parts and isinstance(parts[-1], str):
            parts[-1] += text
        else:
            parts.append(text)

    for index, key in enumerate(_json_keys(tuple(c.name for c in rendered.columns))):
        literal(key)
        text = rendered.text(index) if rendered.columns[index].kind in (STRING, TIMESTAMP) else None
        if text is not None and not text.null_count and not may_contain(text, controls=True, chars=b'"\\'):
            # Nothing to escape or write as null: the quotes join the literal text, saving a quoted copy.
            literal('"')
            parts.append(text)
            literal('"')
        else:
            parts.append(pc.fill_null(rendered.json(index), "null"))
    literal("}\n")
    return pc.binary_join_element_wise(*parts, "")


@cache
def _json_keys(names: tuple[str, ...]) -> list[str]:
    """`{"name":` for the first column, `,"name":` for the others: the same for every batch of a category."""
    return [("{" if index == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":"
            for index, name in enumerate(names)]


def csv_batch(rendered: RenderedBatch) -> pa.RecordBatch:
    """The columns as CSV cells: text neutralised against formulas, timestamps and lists as text."""
    cells = []
    for index, column in enumerate(rendered.columns):
        if column.kind == STRING:
            cells.append(neutralise_formulas(rendered.text(index)))
        elif column.kind in (TIMESTAMP, JSON):
            cells.append(rendered.text(index))
        elif column.kind == STRING_LIST:
            cells.append(rendered.json(index))
        else:
            cells.append(rendered.batch.column(index))
    return pa.RecordBatch.from_arrays(cells, names=[c.name for c in rendered.columns])


def neutralise_formulas(array: pa.Array) -> pa.Array:
    """Prefix an apostrophe to cells a spreadsheet would run as a formula (OWASP CSV injection)."""
    starts = pc.fill_null(pc.match_substring_regex(array, FORMULA_START), False)
    if not pc.any(starts).as_py():
        return array
    # Only the cells that start like a formula can be plain numbers: test just those.
    candidates = pc.filter(array, starts)
    risky = pc.invert(pc.match_substring_regex(candidates, PLAIN_NUMBER))
    if not pc.any(risky).as_py():
        return array
    return pc.replace_with_mask(array, starts, pc.if_else(risky, pc.binary_join_element_wise("'", candidates, ""),
                                                           candidates))

