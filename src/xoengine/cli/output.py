r"""How the command line writes names it did not choose: file names are bytes, not text.

A path on Linux may hold any byte but NUL and ``/``: a newline, an escape
sequence, bytes that are not UTF-8 (held as lone surrogates, PEP 383). Written
raw, such a name could forge lines of a forensic report or stop the output with
a UnicodeEncodeError. :func:`shown` gives the text form (printable names as
they are, any other name quoted with escapes); :func:`json_text` the JSON form
(valid UTF-8 whatever the names: a lone surrogate is written as its ``\uXXXX``
escape, which ``json.loads`` turns back into the same str).
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from typing import Any

__all__ = ["json_text", "plain", "shown"]

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


_SEPARATORS = ("->", ": ")
"""What reports put between two names (`` -> `` in a rename, ``: `` in a mapping): a name
holding one (an arrow without its spaces too: ``x ->`` and ``-> y`` joined by one) is quoted."""


def _needs_quotes(text: str) -> bool:
    return (
        not text.isprintable()
        or text != text.strip()
        or text.startswith('"')
        or any(separator in text for separator in _SEPARATORS)
        or any(unicodedata.combining(char) for char in text)
    )


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable() and not unicodedata.combining(char):
        return char
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def shown(text: str) -> str:
    r"""``text`` as a report line may hold it.

    Printable text without edge spaces is left as it is. Anything else is put
    in double quotes with escapes: ``\n``, ``\t``, ``\"``, ``\\``; ``\xNN`` for
    a byte that was not UTF-8 (NN >= 80) or an ASCII control character;
    ``\uNNNN`` or ``\UNNNNNNNN`` for any other unprintable character (a
    no-break space, a bidirectional override) and for a combining mark (so a
    name in decomposed form, ``cafe\u0301``, is told from the composed one).
    A name holding what reports put between two names (``->``, ``: ``) is
    quoted too. A shown name starts with a quote only if it is quoted.
    """
    if not _needs_quotes(text):
        return text
    return '"' + "".join(_escape(char) for char in text) + '"'


def json_text(value: Any, **options: Any) -> str:
    """``json.dumps(value, ensure_ascii=False, **options)`` that is always valid UTF-8."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def plain(value: Any) -> Any:
    """``value`` as JSON takes it.

    Dataclasses and dicts become dicts (keys as text), lists, tuples and sets
    lists; text, numbers, booleans and None stay; anything else is its text.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
