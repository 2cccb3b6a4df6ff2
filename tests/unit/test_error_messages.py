"""Names in coded error messages: escaped as the CLI's listings escape them."""

from __future__ import annotations

import os

import pytest

from xoengine.errors import PathEscapesRootError, ReplicaWriteError, quoted


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("plain.txt", "'plain.txt'"),
        (os.fsdecode(b"bad\xff"), r"'bad\xff'"),  # a byte that is not UTF-8
        ("nbsp\u00a0", r"'nbsp\u00a0'"),  # a character, not the byte A0
        (os.fsdecode(b"a\xa0") + "\u00a0", r"'a\xa0\u00a0'"),
        ("new\nline\x1b", r"'new\nline\x1b'"),
        ("back\\udcff", r"'back\\udcff'"),  # a backslash in the name stays one
        ("café", "'café'"),
    ],
)
def test_a_name_in_a_message_shows_bytes_as_bytes(name: str, shown: str) -> None:
    """Review 22 (B, F9): a message showed the byte FF of a name as ``\\udcff``."""
    assert quoted(name) == shown
    assert str(PathEscapesRootError(path=name, detail="d")) == (
        f"E2001: The path {shown} would leave its root: d."
    )
    error = ReplicaWriteError(path=name, root="/r", action="write", detail="d")
    assert shown in error.message
    assert "\\udc" not in error.message.replace("\\\\udc", "")
