r"""The public test kit: temporary engines, change scripts on real trees, tree comparison.

Room: edge. May import every room (the engine included); nothing in the
package imports it. Our own tests use it, and so can the tests of programs
that embed xoengine.

- :func:`temporary_engine` opens an :class:`~xoengine.engine.Engine` in a
  scratch state directory and closes (and removes) it afterwards.
- :class:`TreeBuilder` applies a *change script* -- a list of operations such
  as :class:`CreateFile`, :class:`Insert`, :class:`Rename` or
  :class:`Symlink` -- to a real directory. Content operations can go through
  any opener, e.g. :meth:`Scenario.open <xoengine.engine.Scenario.open>`, so
  the same script drives a journaled file object instead of plain files.
- :func:`compare_trees` lists every difference between two trees: names
  (byte-exact, non-UTF-8 included), kinds, content bytes, permission bits,
  symlink targets and, on request, file modification times. It is written
  with nothing but ``os`` so that it can judge xoengine's own walker.

Paths in this module are relative to a root and may be ``bytes`` (any file
name, e.g. ``b"caf\xe9"``) or ``str`` (``os.fsdecode`` form); they are
checked with :func:`~xoengine.walk.normalize_relpath`, so a script can never
touch anything outside its root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

from xoengine.engine import Engine
from xoengine.walk import normalize_relpath, read_xattrs

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "CONTENT_OPERATIONS",
    "Append",
    "Chmod",
    "Chown",
    "CreateFile",
    "Delete",
    "Difference",
    "FileOpener",
    "Insert",
    "MakeDir",
    "Node",
    "Operation",
    "Rename",
    "SetXattr",
    "Symlink",
    "TreeBuilder",
    "Truncate",
    "WriteAt",
    "assert_trees_equal",
    "compare_trees",
    "posix_acl",
    "root_node",
    "snapshot_contents",
    "snapshot_tree",
    "temporary_engine",
]

PathLike: TypeAlias = str | bytes
"""A path relative to a root: bytes (any name) or str (``os.fsdecode`` form)."""

NodeKind: TypeAlias = Literal["file", "dir", "symlink", "special"]

_CHUNK = 1 << 20


def _rel(path: PathLike) -> bytes:
    return os.fsencode(normalize_relpath(path))


# -- temporary engines -----------------------------------------------------------------


@contextlib.contextmanager
def temporary_engine(
    directory: str | os.PathLike[str] | None = None,
    *,
    durability: str = "nosync",
    map_size: int | None = None,
) -> Iterator[Engine]:
    """Open an engine whose state lives in ``<directory>/state``; close it on exit.

    Without ``directory`` a scratch directory is made and removed on exit
    (with everything in it). ``durability`` defaults to ``nosync``: tests
    rarely need fsync, and it is the slow part of an append. The engine is
    closed on exit even if the body raised, and closing twice is harmless,
    so a test may close it itself to reopen the same state directory.
    """
    scratch = None
    if directory is None:
        scratch = tempfile.mkdtemp(prefix="xoengine-test-")
        directory = scratch
    engine = Engine.open(os.path.join(directory, "state"), durability=durability, map_size=map_size)
    try:
        yield engine
    finally:
        engine.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


# -- change scripts --------------------------------------------------------------------


class FileOpener(Protocol):
    """Opens a file under the builder's root by relative path and binary mode.

    ``Scenario.open`` is one (its paths are scenario paths, ``str``); the
    builder's default opens the file directly.
    """

    def __call__(self, path: str, mode: str, /) -> Any:
        """Return a binary file object with write, seek, tell, read, truncate and close."""


@dataclass(frozen=True)
class CreateFile:
    """Write a whole file (created, or replaced in place) with ``data``; parents are made."""

    path: PathLike
    data: bytes = b""

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        builder.makedirs(_parent(self.path))
        with builder.open_file(self.path, "wb") as f:
            f.write(self.data)


@dataclass(frozen=True)
class WriteAt:
    """Overwrite bytes at ``offset`` (past the end leaves a hole of zeros)."""

    path: PathLike
    offset: int
    data: bytes

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        with builder.open_file(self.path, "r+b") as f:
            f.seek(self.offset)
            f.write(self.data)


@dataclass(frozen=True)
class Append:
    """Add ``data`` at the end of a file."""

    path: PathLike
    data: bytes

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        with builder.open_file(self.path, "ab") as f:
            f.write(self.data)


@dataclass(frozen=True)
class Insert:
    """Insert ``data`` at ``offset``: everything after it moves (the file is rewritten in place)."""

    path: PathLike
    offset: int
    data: bytes

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        with builder.open_file(self.path, "r+b") as f:
            f.seek(self.offset)
            rest = f.read()
            f.seek(self.offset)
            f.write(self.data + rest)


@dataclass(frozen=True)
class Truncate:
    """Cut a file to ``size`` bytes, or extend it with zeros."""

    path: PathLike
    size: int

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        with builder.open_file(self.path, "r+b") as f:
            f.truncate(self.size)


@dataclass(frozen=True)
class Rename:
    """Move ``path`` (a file, link or whole directory) to ``new_path``; replaces a file there."""

    path: PathLike
    new_path: PathLike

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        os.rename(builder.abspath(self.path), builder.abspath(self.new_path))


@dataclass(frozen=True)
class Delete:
    """Remove a file or link, or a directory with everything below it (links are not followed)."""

    path: PathLike

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        full = builder.abspath(self.path)
        if stat.S_ISDIR(os.lstat(full).st_mode):
            shutil.rmtree(full)
        else:
            os.unlink(full)


@dataclass(frozen=True)
class MakeDir:
    """Make a directory (and missing parents) with permission bits ``mode``."""

    path: PathLike
    mode: int = 0o755

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        builder.makedirs(_parent(self.path))
        full = builder.abspath(self.path)
        os.mkdir(full)
        os.chmod(full, self.mode)


@dataclass(frozen=True)
class Symlink:
    """Make a symbolic link at ``path`` to ``target`` (any bytes: relative, absolute, dangling)."""

    path: PathLike
    target: PathLike

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        builder.makedirs(_parent(self.path))
        os.symlink(os.fsencode(self.target), builder.abspath(self.path))


@dataclass(frozen=True)
class Chmod:
    """Set the permission bits of a file or directory."""

    path: PathLike
    mode: int

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        os.chmod(builder.abspath(self.path), self.mode)


@dataclass(frozen=True)
class Chown:
    """Set the owner (uid and gid) of a file, directory or link itself (root only)."""

    path: PathLike
    uid: int
    gid: int

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        os.chown(builder.abspath(self.path), self.uid, self.gid, follow_symlinks=False)


@dataclass(frozen=True)
class SetXattr:
    """Set an extended attribute of a file, directory or link itself (None: remove it)."""

    path: PathLike
    name: str
    value: bytes | None

    def apply(self, builder: TreeBuilder) -> None:
        """Apply to ``builder``'s tree."""
        where = builder.abspath(self.path)
        if self.value is None:
            os.removexattr(where, self.name, follow_symlinks=False)
        else:
            os.setxattr(where, self.name, self.value, follow_symlinks=False)


def posix_acl(
    user_obj: int,
    group_obj: int,
    other: int,
    *,
    users: Iterable[tuple[int, int]] = (),
    groups: Iterable[tuple[int, int]] = (),
    mask: int | None = None,
) -> bytes:
    """A ``system.posix_acl_access``/``_default`` value, for :class:`SetXattr`.

    Permissions are ``rwx`` bits (0-7): the owner's, the owning group's, the
    others'; ``users``/``groups`` are named entries ``(id, perms)``, which need
    a ``mask``. The kernel's format: version 2, then ``(tag, perms, id)``
    entries by tag, then id.
    """
    no_id = 0xFFFFFFFF
    entries = [(0x01, user_obj, no_id), (0x04, group_obj, no_id), (0x20, other, no_id)]
    entries += [(0x02, perms, uid) for uid, perms in users]
    entries += [(0x08, perms, gid) for gid, perms in groups]
    if mask is not None:
        entries.append((0x10, mask, no_id))
    entries.sort(key=lambda e: (e[0], e[2]))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


Operation: TypeAlias = (
    CreateFile
    | WriteAt
    | Append
    | Insert
    | Truncate
    | Rename
    | Delete
    | MakeDir
    | Symlink
    | Chmod
    | Chown
    | SetXattr
)
"""One step of a change script."""

CONTENT_OPERATIONS: tuple[type, ...] = (CreateFile, WriteAt, Append, Insert, Truncate)
"""Operations that only open files (so they can run through any :class:`FileOpener`)."""


def _parent(path: PathLike) -> bytes:
    return _rel(path).rpartition(b"/")[0]


class TreeBuilder:
    """Applies change scripts to the real directory ``root``.

    Content operations open files through ``opener`` (default: plain files
    under ``root``); pass ``Scenario.open`` to journal them as they happen.
    Everything else (rename, delete, mkdir, symlink, chmod) acts on the tree
    directly. An operation that the tree cannot take (a missing file, a
    rename into itself) raises the ``OSError`` the system call gave.
    """

    def __init__(self, root: str | os.PathLike[str], opener: FileOpener | None = None) -> None:
        """Build under ``root`` (created if missing)."""
        self.root = os.fspath(root)
        os.makedirs(self.root, exist_ok=True)
        self.opener = opener
        self.applied: list[Operation] = []

    def abspath(self, path: PathLike) -> bytes:
        """The absolute path of ``path`` under the root (bytes, so any name works)."""
        return os.fsencode(self.root) + b"/" + _rel(path)

    def makedirs(self, path: PathLike) -> None:
        """Make ``path`` and its missing parents (nothing if ``path`` is empty: the root)."""
        if os.fsencode(path):
            os.makedirs(self.abspath(path), exist_ok=True)

    def open_file(self, path: PathLike, mode: str) -> IO[bytes]:
        """Open a file for a content operation, through the opener if there is one."""
        if self.opener is not None:
            file: IO[bytes] = self.opener(os.fsdecode(_rel(path)), mode)
            return file
        return open(self.abspath(path), mode)

    def apply(self, operation: Operation) -> None:
        """Apply one operation and remember it in :attr:`applied`."""
        operation.apply(self)
        self.applied.append(operation)

    def apply_all(self, script: Iterable[Operation]) -> None:
        """Apply every operation of ``script`` in order."""
        for operation in script:
            self.apply(operation)

    def snapshot(self) -> dict[bytes, Node]:
        """The tree as it is now (see :func:`snapshot_tree`)."""
        return snapshot_tree(self.root)


# -- snapshots and comparison ----------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One entry of a tree as ``lstat`` saw it; ``content`` holds a file's bytes if asked for."""

    kind: NodeKind
    mode: int
    size: int
    mtime_ns: int
    target: bytes | None = None
    content: bytes | None = None
    owner: tuple[int, int] = (-1, -1)
    xattrs: tuple[tuple[str, bytes], ...] = ()
    """Extended attributes, sorted by name."""


@dataclass(frozen=True)
class Difference:
    """One way two trees differ at ``path`` (relative bytes).

    ``aspect`` is ``missing`` (only in the left tree), ``extra`` (only in
    the right tree), ``kind``, ``content``, ``mode``, ``owner``, ``xattrs``, ``target``
    or ``mtime``; ``left`` and ``right`` show the two values (for content: the
    size and the first differing offset).
    """

    path: bytes
    aspect: str
    left: object
    right: object

    def __str__(self) -> str:
        """One line for an assertion message."""
        return f"{self.path!r}: {self.aspect} {self.left!r} != {self.right!r}"


def _kind(mode: int) -> NodeKind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


def snapshot_tree(
    root: str | os.PathLike[str] | bytes, *, content: bool = True
) -> dict[bytes, Node]:
    """Every entry under ``root`` (not the root itself), by relative bytes path.

    Symlinks are recorded with their target and never followed. With
    ``content`` (the default) each file's bytes are kept in the node, so
    snapshots of small trees can be compared after the tree changed.
    """
    base = os.fsencode(root)
    out: dict[bytes, Node] = {}

    def visit(rel: bytes) -> None:
        here = base + b"/" + rel if rel else base
        for name in sorted(os.listdir(here)):
            child = rel + b"/" + name if rel else name
            full = base + b"/" + child
            st = os.lstat(full)
            kind = _kind(st.st_mode)
            target = os.readlink(full) if kind == "symlink" else None
            data = None
            if kind == "file" and content:
                with open(full, "rb") as f:
                    data = f.read()
            out[child] = Node(
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_size,
                st.st_mtime_ns,
                target,
                data,
                (st.st_uid, st.st_gid),
                tuple(read_xattrs(os.fsdecode(full)).items()),
            )
            if kind == "dir":
                visit(child)

    visit(b"")
    return out


def snapshot_contents(root: str | os.PathLike[str] | bytes) -> dict[bytes, tuple[Any, ...]]:
    """A time-free view of :func:`snapshot_tree`: what rewinds and replays must reproduce.

    ``("file", mode, bytes, xattrs, owner)``, ``("dir", mode, xattrs, owner)``
    or ``("symlink", target, xattrs, owner)`` per relative bytes path, ``xattrs``
    being :attr:`Node.xattrs` and ``owner`` ``(uid, gid)`` (times, sizes of
    directories and link modes left out).
    """
    out: dict[bytes, tuple[Any, ...]] = {}
    for path, node in snapshot_tree(root).items():
        if node.kind == "symlink":
            out[path] = ("symlink", node.target, node.xattrs, node.owner)
        elif node.kind == "dir":
            out[path] = ("dir", node.mode, node.xattrs, node.owner)
        else:
            out[path] = (node.kind, node.mode, node.content, node.xattrs, node.owner)
    return out


def _first_difference(a: bytes, b: bytes) -> int:
    limit = min(len(a), len(b))
    for start in range(0, limit, 4096):
        end = min(start + 4096, limit)  # a prefix of the other is no difference before limit
        if a[start:end] != b[start:end]:
            return next(i for i in range(start, end) if a[i] != b[i])
    return limit


def _files_differ(left: bytes, right: bytes) -> int | None:
    """Offset of the first differing byte of two files, or None if their bytes are equal."""
    with open(left, "rb") as a, open(right, "rb") as b:
        offset = 0
        while True:
            x, y = a.read(_CHUNK), b.read(_CHUNK)
            if x != y:
                return offset + _first_difference(x, y)
            if not x:
                return None
            offset += len(x)


def root_node(root: str | os.PathLike[str] | bytes) -> Node:
    """The root directory itself as :func:`snapshot_tree` records its entries (a link: followed)."""
    st = os.stat(root)
    xattrs = read_xattrs(os.path.realpath(os.fsdecode(root)))
    return Node(
        "dir",
        stat.S_IMODE(st.st_mode),
        st.st_size,
        st.st_mtime_ns,
        owner=(st.st_uid, st.st_gid),
        xattrs=tuple(xattrs.items()),
    )


def compare_trees(
    left: str | os.PathLike[str] | bytes,
    right: str | os.PathLike[str] | bytes,
    *,
    mtimes: bool = False,
    modes: bool = True,
    owners: bool = True,
    xattrs: bool = True,
    root: bool = False,
    ignore: Iterable[PathLike] = (),
) -> list[Difference]:
    """Every difference between the trees under ``left`` and ``right`` (empty: identical).

    Names are compared as bytes; kinds, file contents (byte by byte),
    permission bits (``modes``), owners (``owners``: uid and gid, links
    included), extended attributes (``xattrs``), symlink targets (as bytes) and, with
    ``mtimes``, file modification times (to the nanosecond; directories and
    links are not compared, since creating an entry moves its directory's
    mtime). With ``root``, the roots' own permission bits, owners and extended
    attributes too (as ``.``), as a replica's own directory copies them. Paths
    in ``ignore`` (and everything below them) are skipped on both sides.
    """
    skip = [_rel(p) for p in ignore]

    def ignored(path: bytes) -> bool:
        return any(path == s or path.startswith(s + b"/") for s in skip)

    a = snapshot_tree(left, content=False)
    b = snapshot_tree(right, content=False)
    bases = (os.fsencode(left), os.fsencode(right))
    diffs: list[Difference] = []
    if root:
        options = {"mtimes": False, "modes": modes, "owners": owners, "xattrs": xattrs}
        diffs += _compare_nodes(b".", root_node(left), root_node(right), bases, **options)
    for path in sorted(set(a) | set(b)):
        if not ignored(path):
            diffs.extend(
                _compare_nodes(
                    path,
                    a.get(path),
                    b.get(path),
                    bases,
                    mtimes=mtimes,
                    modes=modes,
                    owners=owners,
                    xattrs=xattrs,
                )
            )
    return diffs


def _compare_nodes(
    path: bytes,
    x: Node | None,
    y: Node | None,
    bases: tuple[bytes, bytes],
    *,
    mtimes: bool,
    modes: bool,
    owners: bool,
    xattrs: bool,
) -> list[Difference]:
    if x is None or y is None:
        aspect = "missing" if y is None else "extra"
        return [Difference(path, aspect, x and x.kind, y and y.kind)]
    if x.kind != y.kind:
        return [Difference(path, "kind", x.kind, y.kind)]
    diffs = []
    if owners and x.owner != y.owner:
        left, right = (f"{n.owner[0]}:{n.owner[1]}" for n in (x, y))
        diffs.append(Difference(path, "owner", left, right))
    if xattrs and x.xattrs != y.xattrs:
        diffs.append(Difference(path, "xattrs", dict(x.xattrs), dict(y.xattrs)))
    if x.kind == "symlink":
        if x.target != y.target:
            diffs.append(Difference(path, "target", x.target, y.target))
        return diffs
    if modes and x.mode != y.mode:
        diffs.append(Difference(path, "mode", oct(x.mode), oct(y.mode)))
    if x.kind == "file":
        offset = _files_differ(bases[0] + b"/" + path, bases[1] + b"/" + path)
        if offset is not None:
            right = f"{y.size} bytes, first at {offset}"
            diffs.append(Difference(path, "content", f"{x.size} bytes", right))
        if mtimes and x.mtime_ns != y.mtime_ns:
            diffs.append(Difference(path, "mtime", x.mtime_ns, y.mtime_ns))
    return diffs


def assert_trees_equal(
    left: str | os.PathLike[str] | bytes,
    right: str | os.PathLike[str] | bytes,
    **options: Any,
) -> None:
    """Raise ``AssertionError`` listing the differences (see :func:`compare_trees`), if any."""
    diffs = compare_trees(left, right, **options)
    if diffs:
        shown = "\n  ".join(str(d) for d in diffs[:20])
        more = f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else ""
        raise AssertionError(f"{len(diffs)} difference(s):\n  {shown}{more}")
