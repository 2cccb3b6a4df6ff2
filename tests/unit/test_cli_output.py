"""File names in CLI output: any bytes a name may hold, shown unambiguously, never a crash."""

from __future__ import annotations

import json
import os
import re

from hypothesis import given
from hypothesis import strategies as st

from xoengine.cli.output import json_text, shown

_UNESCAPE = re.compile(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[nrt"\\])')


def unshown(text: str) -> str:
    """The inverse of ``shown``, written from its documented form."""
    if not text.startswith('"'):
        return text

    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x":
            value = int(code[1:], 16)
            return chr(value) if value < 0x80 else os.fsdecode(bytes([value]))
        if code[0] in "uU":
            return chr(int(code[1:], 16))
        return {"n": "\n", "r": "\r", "t": "\t"}.get(code, code)

    return _UNESCAPE.sub(one, text[1:-1])


# File names as Linux has them: bytes but NUL and "/", decoded as Python decodes them
# (raw bytes, and valid text with every kind of character in it).
names = st.one_of(
    st.binary(min_size=1, max_size=40).map(os.fsdecode),
    st.text(min_size=1, max_size=20),
).filter(lambda n: "\0" not in n and "/" not in n)


@given(names)
def test_a_shown_name_is_one_printable_line_that_gives_the_name_back(name: str) -> None:
    text = shown(name)
    assert text.isprintable()  # no newline, no escape sequence, no lone surrogate
    assert text.encode("utf-8")  # writable to any UTF-8 stream
    assert unshown(text) == name


@given(st.lists(names, max_size=5))
def test_json_text_is_valid_utf8_and_round_trips(names: list[str]) -> None:
    value = {"added": names}
    text = json_text(value, indent=2)
    text.encode("utf-8")  # strict: no lone surrogate left
    assert json.loads(text) == value


def test_plain_names_stay_plain() -> None:
    assert shown("docs/readme.txt") == "docs/readme.txt"
    assert shown("café/naïve.txt") == "café/naïve.txt"
    assert shown("new\nline") == '"new\\nline"'
    assert shown(os.fsdecode(b"bad\xff")) == '"bad\\xff"'
    assert shown('"quoted"') == '"\\"quoted\\""'
    assert shown("trailing ") == '"trailing "'
    # A no-break space (valid UTF-8) and the byte A0 (not UTF-8) must not look alike.
    assert shown("a\u00a0b") == '"a\\u00a0b"'
    assert shown(os.fsdecode(b"a\xa0b")) == '"a\\xa0b"'
    assert shown("\u202eevil") == '"\\u202eevil"'  # a right-to-left override


def test_names_that_hold_a_reports_separators_or_combining_marks_are_quoted() -> None:
    """Review 24 (H1): ``x -> y`` renamed to ``z`` and ``x`` renamed to ``y -> z`` printed
    the same history line (and ``a: b``/``b: c`` the same diff line); ``café`` composed
    and decomposed printed alike."""
    assert f"{shown('x -> y')} -> {shown('z')}" != f"{shown('x')} -> {shown('y -> z')}"
    assert f"{shown('a: b')}: {shown('c')}" != f"{shown('a')}: {shown('b: c')}"
    assert shown("x -> y") == '"x -> y"'
    assert shown("cafe\u0301.txt") == '"cafe\\u0301.txt"'
    assert shown("caf\u00e9.txt") == "caf\u00e9.txt"
    assert shown("a:b") == "a:b"  # a colon without its space is no separator
    # Review 24 (I5): "x" -> "-> y" and "x ->" -> "y" printed "x -> -> y" alike.
    assert f"{shown('x')} -> {shown('-> y')}" != f"{shown('x ->')} -> {shown('y')}"
