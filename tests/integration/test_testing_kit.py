"""The public test kit (xoengine.testing) judged on its own: builder, comparison, temporary engine."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from xoengine.errors import PathEscapesRootError
from xoengine.testing import (
    Append,
    Chmod,
    CreateFile,
    Delete,
    Difference,
    Insert,
    MakeDir,
    Rename,
    Symlink,
    TreeBuilder,
    Truncate,
    WriteAt,
    assert_trees_equal,
    compare_trees,
    snapshot_tree,
    temporary_engine,
)

if TYPE_CHECKING:
    from pathlib import Path


def test_tree_builder_applies_every_operation(tmp_path: Path) -> None:
    builder = TreeBuilder(tmp_path / "t")
    builder.apply_all(
        [
            CreateFile("d/f", b"0123456789"),
            WriteAt("d/f", 2, b"ab"),
            Append("d/f", b"!"),
            Insert("d/f", 1, b"INS"),
            Truncate("d/f", 8),
            CreateFile(b"caf\xe9", b""),
            Truncate(b"caf\xe9", 3),
            MakeDir("e/g", 0o700),
            Symlink("e/link", b"../caf\xe9"),
            Rename("d", "e/g/d"),
            Chmod("e/g/d/f", 0o640),
            CreateFile("gone/x", b"x"),
            Delete("gone"),
        ]
    )
    tree = snapshot_tree(tmp_path / "t")
    assert sorted(tree) == [b"caf\xe9", b"e", b"e/g", b"e/g/d", b"e/g/d/f", b"e/link"]
    assert tree[b"e/g/d/f"].content == b"0INS1ab4"
    assert tree[b"e/g/d/f"].mode == 0o640
    assert tree[b"caf\xe9"].content == b"\0\0\0"
    assert tree[b"e/g"].mode == 0o700
    assert tree[b"e/link"].target == b"../caf\xe9"
    assert len(builder.applied) == 13


def test_tree_builder_refuses_paths_outside_its_root(tmp_path: Path) -> None:
    builder = TreeBuilder(tmp_path / "t")
    with pytest.raises(PathEscapesRootError):
        builder.apply(CreateFile("../escape", b"x"))
    assert not (tmp_path / "escape").exists()


def test_compare_trees_reports_every_aspect(tmp_path: Path) -> None:
    a, b = TreeBuilder(tmp_path / "a"), TreeBuilder(tmp_path / "b")
    common = [CreateFile("same", b"s"), MakeDir("dir")]
    a.apply_all(
        [
            *common,
            CreateFile("content", b"abcd"),
            CreateFile("prefix", b"first line\n"),
            CreateFile("mode", b"m"),
            Chmod("mode", 0o600),
            Symlink("target", "one"),
            CreateFile("kind", b"k"),
            CreateFile(b"caf\xe9", b"latin-1 name"),
        ]
    )
    b.apply_all(
        [
            *common,
            CreateFile("content", b"abXd"),
            CreateFile("prefix", b"first line\nappended\n"),  # the other's bytes, and more
            CreateFile("mode", b"m"),
            Chmod("mode", 0o644),
            Symlink("target", "two"),
            MakeDir("kind"),
            CreateFile("caf\u00e9", b"latin-1 name"),  # same text, other bytes: another name
        ]
    )
    diffs = compare_trees(tmp_path / "a", tmp_path / "b")
    assert {(d.path, d.aspect) for d in diffs} == {
        (b"caf\xe9", "missing"),
        ("caf\u00e9".encode(), "extra"),
        (b"content", "content"),
        (b"prefix", "content"),
        (b"kind", "kind"),
        (b"mode", "mode"),
        (b"target", "target"),
    }
    content = next(d for d in diffs if d.aspect == "content")
    assert "first at 2" in str(content.right)
    prefix = next(d for d in diffs if d.path == b"prefix")
    assert (prefix.left, prefix.right) == ("11 bytes", "20 bytes, first at 11")
    assert compare_trees(tmp_path / "a", tmp_path / "a", mtimes=True) == []
    os.utime(tmp_path / "a" / "same", ns=(1, 1))
    os.utime(tmp_path / "b" / "same", ns=(2, 2))
    assert Difference(b"same", "mtime", 1, 2) in compare_trees(
        tmp_path / "a", tmp_path / "b", mtimes=True
    )
    assert [
        d.aspect
        for d in compare_trees(
            tmp_path / "a",
            tmp_path / "b",
            ignore=[b"caf\xe9", "caf\u00e9", "content", "prefix", "kind", "mode", "target"],
        )
    ] == []
    with pytest.raises(AssertionError, match="difference"):
        assert_trees_equal(tmp_path / "a", tmp_path / "b")
    assert str(Difference(b"p", "mode", "0o600", "0o644")) == "b'p': mode '0o600' != '0o644'"


def test_temporary_engine_removes_its_scratch_directory() -> None:
    with temporary_engine() as engine:
        state = engine.state_dir
        assert state.is_dir()
    assert engine._closed
    assert not state.parent.exists()


def test_temporary_engine_in_a_given_directory_keeps_it(tmp_path: Path) -> None:
    with temporary_engine(tmp_path) as engine:
        engine.close()  # closing early (to reopen the state) is allowed
    assert (tmp_path / "state" / "journal").is_dir()
