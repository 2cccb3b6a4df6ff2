"""Properties of xoengine.walk: no input escapes the root; a walk reports exactly the tree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xoengine.errors import PathError, SymlinkedParentError
from xoengine.walk import PathFilter, normalize_relpath, resolve_under, walk

if TYPE_CHECKING:
    from collections.abc import Iterator

# Parts that exercise every rule: escapes, empties, NUL, a lone surrogate, a
# non-UTF-8 byte, and the names of the fixture root's dir, file and symlinks.
PARTS = ["..", ".", "", "d", "f", "link", "up", "x", "\x00", "\\", "caf\udce9", "\ud800", "é"]
hostile_text = st.tuples(st.booleans(), st.lists(st.sampled_from(PARTS), max_size=6)).map(
    lambda t: ("/" if t[0] else "") + "/".join(t[1])
)
hostile_bytes = hostile_text.filter(lambda s: "\ud800" not in s).map(os.fsencode)
raw_paths = st.text() | st.binary() | hostile_text | hostile_bytes


@pytest.fixture(scope="module")
def root() -> Iterator[str]:
    """root/{d/, f, link -> ../outside, up -> ..} next to an outside directory.

    Made with tempfile, not tmp_path_factory: pytest 9's tmp_path cleanup leaks
    a scandir iterator, an error under ``filterwarnings = error``.
    """
    base = Path(tempfile.mkdtemp(prefix="xo-walkprop-"))
    (base / "outside").mkdir()
    tree = base / "root"
    (tree / "d").mkdir(parents=True)
    (tree / "f").write_bytes(b"")
    (tree / "link").symlink_to("../outside")
    (tree / "up").symlink_to("..")
    yield str(tree)
    shutil.rmtree(base)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


@settings(max_examples=500, deadline=None)
@given(raw=raw_paths)
def test_normalize_relpath_refuses_or_stays_under_the_root(root: str, raw: str | bytes) -> None:
    try:
        rel = normalize_relpath(raw)
    except PathError:
        return
    # The result is canonical: idempotent, byte-exact, and free of every escape.
    assert normalize_relpath(rel) == rel
    assert normalize_relpath(os.fsencode(rel)) == rel
    assert os.fsdecode(os.fsencode(rel)) == rel
    parts = rel.split("/")
    assert all(part not in {"", ".", ".."} for part in parts)
    assert "\x00" not in rel
    try:
        resolved = resolve_under(root, rel)
    except SymlinkedParentError:
        assert len(parts) > 1
        assert parts[0] in {"link", "up"}
        return
    except PathError:
        return  # a file as parent, or a parent that cannot be checked (too long)
    assert parts[0] not in {"link", "up"} or len(parts) == 1
    assert resolved == root + "/" + rel
    # The kernel agrees with the lexical check: the parent is really under the root.
    assert _inside(os.path.realpath(os.path.dirname(resolved)), os.path.realpath(root))


@settings(max_examples=300, deadline=None)
@given(raw=st.binary() | hostile_bytes)
def test_normalize_relpath_treats_bytes_and_their_fsdecoded_text_alike(raw: bytes) -> None:
    text = os.fsdecode(raw)
    outcomes = []
    for value in (raw, text):
        try:
            outcomes.append(normalize_relpath(value))
        except PathError as e:
            outcomes.append(type(e).__name__)
    assert outcomes[0] == outcomes[1]


# -- generated trees ------------------------------------------------------------------

names = st.binary(min_size=1, max_size=12).filter(
    lambda b: b"/" not in b and b"\x00" not in b and b not in {b".", b".."}
)
leaves = st.tuples(st.just("file"), st.binary(max_size=20)) | st.tuples(
    st.just("symlink"), st.binary(min_size=1, max_size=20).filter(lambda b: b"\x00" not in b)
)
trees = st.recursive(
    leaves,
    lambda children: st.tuples(st.just("dir"), st.dictionaries(names, children, max_size=4)),
    max_leaves=20,
).map(lambda node: node if node[0] == "dir" else ("dir", {b"only": node}))


def _make(base: bytes, node: tuple[str, Any]) -> None:
    for name, (kind, value) in node[1].items():
        path = base + b"/" + name
        if kind == "dir":
            os.mkdir(path)
            _make(path, (kind, value))
        elif kind == "file":
            with open(path, "wb") as f:
                f.write(value)
        else:
            os.symlink(value, path)


def _expected(node: tuple[str, Any], prefix: bytes = b"") -> Iterator[tuple[bytes, str, Any]]:
    """Pre-order, siblings in byte order: what the walk must report, in that order."""
    for name in sorted(node[1]):
        kind, value = node[1][name]
        rel = prefix + name
        yield rel, kind, None if kind == "dir" else value
        if kind == "dir":
            yield from _expected((kind, value), rel + b"/")


@settings(max_examples=150, deadline=None)
@given(tree=trees)
def test_walk_reports_exactly_the_created_tree(tree: tuple[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = os.fsencode(tmp)
        _make(base, tree)
        w = walk(base)
        got = []
        for e in w:
            detail: Any = None
            if e.kind == "file":
                detail = (Path(tmp) / e.relpath).read_bytes()
                assert e.size == len(detail)
            elif e.kind == "symlink":
                detail = os.fsencode(e.target or "")
            got.append((os.fsencode(e.relpath), e.kind, detail))
        assert got == list(_expected(tree))
        assert (w.warnings, w.unlisted) == ([], [])


# Few names, so that the patterns below actually match parts of the trees.
small_names = st.sampled_from([b"a", b"b", b"c.tmp", b"d.py", b"\xe9", b"node_modules"])
small_trees = st.recursive(
    st.tuples(st.just("file"), st.just(b"")),
    lambda children: st.tuples(st.just("dir"), st.dictionaries(small_names, children, max_size=4)),
    max_leaves=15,
).map(lambda node: node if node[0] == "dir" else ("dir", {b"a": node}))
PATTERNS = ["*.tmp", "a/", "/b", "**/a", "a/*", "\udce9", "*.py", "b", "**/node_modules", "a/b"]


@settings(max_examples=150, deadline=None)
@given(
    tree=small_trees,
    include=st.lists(st.sampled_from(PATTERNS), max_size=2),
    exclude=st.lists(st.sampled_from(PATTERNS), max_size=2),
)
def test_walk_filter_agrees_with_path_filter_selects(
    tree: tuple[str, Any], include: list[str], exclude: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = os.fsencode(tmp)
        _make(base, tree)
        everything = [(os.fsdecode(rel), kind) for rel, kind, _ in _expected(tree)]
        chosen = PathFilter(include, exclude)
        wanted = [rel for rel, kind in everything if chosen.selects(rel, is_dir=kind == "dir")]
        # Same set as selects() decides path by path, in the unfiltered walk's order.
        assert [e.relpath for e in walk(base, include=include, exclude=exclude)] == wanted
