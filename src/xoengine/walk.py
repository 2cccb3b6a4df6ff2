r"""Tree walking and path safety: the one walker and the one path normaliser.

Room: algorithms/storage. Imports only :mod:`xoengine.errors` and the stdlib.

Relative paths (the project's name type)
    A *relpath* names a file under a root. It is a ``str`` as :func:`os.fsdecode`
    makes it (``surrogateescape``: a name that is not UTF-8, like ``b"caf\xe9"``,
    becomes ``"caf\udce9"`` and :func:`os.fsencode` gives the same bytes back),
    with ``/`` separators, never absolute, with no empty, ``.`` or ``..`` part
    and no NUL. File names are bytes-exact: two relpaths are equal exactly when
    their bytes are. Every path from outside (journal, media, network, user)
    goes through :func:`normalize_relpath`, which returns this form or raises a
    :class:`~xoengine.errors.PathError`. ``..`` is refused rather than folded
    away because folding is lexical and the kernel is not (``a/..`` is not ``.``
    when ``a`` is a symlink). A backslash is an ordinary byte of a POSIX name.

Writing under a root
    :func:`resolve_under` joins a relpath to a root and refuses it when an
    existing parent below the root is a symlink (or not a directory): a check
    for messages and dry runs. Writers use :func:`open_parent`, which opens
    each parent with ``O_NOFOLLOW | O_DIRECTORY`` relative to the previous
    one, so a symlink swapped in mid-way is refused instead of followed; the
    caller then opens the leaf with ``dir_fd`` and ``O_NOFOLLOW``. The root
    itself is configuration, so a root that is a symlink is followed. A
    :class:`ParentCache` keeps the directories it opened for a batch of writes
    in which no directory is moved or removed (a replay, a run of in-place
    undos), so each is opened once.

Directories without the owner's write permission
    A process that is not root cannot add or remove names in a directory of
    its own whose mode lacks ``u+wx`` (a read-only ``0555`` directory a replay
    or a replica must hold files in). :func:`as_owner` does such a call again
    with ``u+wx`` added to the directories it names and their mode put back
    right after (``rsync -a`` run by a user gets there by making directories
    writable first and giving them their modes at the end). A kill in between
    leaves a directory with ``u+wx`` too many: a verification reports it, the
    next synchronization puts its mode right.

Walking
    :func:`walk` lists a tree the same way for master scans, sync and
    verification: see :class:`Walk` for the order, the filter rules and what
    happens when the tree changes while it is read.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import re
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from struct import Struct
from typing import Any, Final, Literal, NamedTuple, Self, TypeAlias, TypeVar, overload

from xoengine.errors import (
    ConfigurationError,
    EntryUnreadableWarning,
    EntryVanishedWarning,
    InvalidRelPathError,
    ParentNotDirectoryError,
    PathError,
    PathEscapesRootError,
    ReservedNameSkippedWarning,
    SymlinkedParentError,
    TreeRootMissingError,
    TreeRootUnreadableError,
    TreeWarning,
)

__all__ = [
    "CAPABILITY",
    "Entry",
    "Kind",
    "ParentCache",
    "PathFilter",
    "RelPath",
    "Walk",
    "Xattrs",
    "as_owner",
    "at_fd",
    "birth_ns",
    "check_real_root",
    "entry_from_stat",
    "normalize_relpath",
    "open_directory",
    "open_parent",
    "open_to_others",
    "own_meta",
    "owner_access",
    "path_and_parents",
    "read_xattrs",
    "resolve_under",
    "stat_entry",
    "walk",
    "xattrs_below",
]

RelPath: TypeAlias = str
"""A normalised relative path (see the module docstring)."""

Kind: TypeAlias = Literal["file", "dir", "symlink", "special"]
"""What an entry is; ``special`` covers fifos, sockets and devices."""

AnyPath: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
Pattern: TypeAlias = str | bytes

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Opening a directory that was replaced by a file or symlink (O_NOFOLLOW gives
# ENOTDIR on Linux, ELOOP elsewhere) or removed: it is gone, not unreadable.
_GONE: Final = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})


# -- relative paths ---------------------------------------------------------------


def path_and_parents(path: RelPath) -> list[RelPath]:
    """``path`` and every directory above it, shortest first (``a/b`` -> ``a``, ``a/b``)."""
    parts = path.split("/")
    return ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]


def normalize_relpath(path: str | bytes) -> RelPath:
    """Return ``path`` as a relpath, or raise a coded :class:`PathError`.

    Empty and ``.`` parts are dropped (``"./a//b/"`` -> ``"a/b"``); ``bytes``
    and ``str`` naming the same bytes give the same result, so the result is
    canonical. Raises :class:`~xoengine.errors.PathEscapesRootError` for an
    absolute path or a ``..`` part, :class:`~xoengine.errors.InvalidRelPathError`
    for a NUL byte, a path naming nothing (``""``, ``"."``), a ``str`` that no
    file name can hold (a lone surrogate) or a value that is not str/bytes.
    """
    if isinstance(path, str):
        try:
            raw = os.fsencode(path)
        except UnicodeEncodeError as e:
            raise InvalidRelPathError(
                path=path, detail="no file name holds these characters"
            ) from e
    elif isinstance(path, bytes):
        raw = path
    else:
        raise InvalidRelPathError(path=path, detail=f"a {type(path).__name__} is not a path")
    if b"\0" in raw:
        raise InvalidRelPathError(path=path, detail="it holds a NUL byte")
    if raw.startswith(b"/"):
        raise PathEscapesRootError(path=path, detail="it is absolute")
    parts = [part for part in raw.split(b"/") if part not in {b"", b"."}]
    if b".." in parts:
        raise PathEscapesRootError(path=path, detail="it has a '..' part")
    if not parts:
        raise InvalidRelPathError(path=path, detail="it names no file under the root")
    return os.fsdecode(b"/".join(parts))


@overload
def resolve_under(root: str | os.PathLike[str], relpath: str | bytes) -> str: ...
@overload
def resolve_under(root: bytes | os.PathLike[bytes], relpath: str | bytes) -> bytes: ...
def resolve_under(root: AnyPath, relpath: str | bytes) -> str | bytes:
    """Return the absolute path of ``relpath`` under ``root`` (bytes if ``root`` is bytes).

    The result is lexically under ``root`` (``relpath`` is normalised first),
    and every parent below ``root`` that exists right now is a real directory:
    a symlink raises :class:`~xoengine.errors.SymlinkedParentError`, anything
    else :class:`~xoengine.errors.ParentNotDirectoryError`; a parent that
    cannot be checked (no permission, a path longer than ``PATH_MAX``) raises
    :class:`~xoengine.errors.PathError`. Missing parents are fine. The last
    component is not checked: it may be a symlink the caller means to replace.
    This is a check at one instant; to write, use :func:`open_parent`, which
    holds the parents open.
    """
    rel = normalize_relpath(relpath)
    given = os.fspath(root)
    base = os.fsencode(given)
    if not base.startswith(b"/"):
        base = os.getcwdb() + b"/" + base
    base = base.rstrip(b"/") + b"/"
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        parent = "/".join(parts[:depth])
        try:
            st = os.lstat(base + os.fsencode(parent))
        except FileNotFoundError:
            break
        except OSError as e:
            raise PathError(path=rel, detail=f"cannot check {parent!r}: {e.strerror}") from e
        _check_parent(st, rel, given, parent)
    result = base + os.fsencode(rel)
    return result if isinstance(given, bytes) else os.fsdecode(result)


PARENT_CACHE_FDS: Final = 256
"""Directories a :class:`ParentCache` keeps open at most."""


class ParentCache:
    """Directories under one root held open for a batch of :func:`open_parent` calls.

    Each directory is opened once, the way :func:`open_parent` opens it (no
    symlink followed). Only for batches that move or remove no directory: a
    held fd follows its directory wherever it goes. Close it when done.

    At most :data:`PARENT_CACHE_FDS` directories stay open (the least recently
    used are closed first), so a tree with more directories than the process
    may open files is no error; the most recent ones always stay, so an
    operation holding two parents at once (a rename) keeps both.
    """

    def __init__(self, root: AnyPath, limit: int = PARENT_CACHE_FDS) -> None:
        """Hold directories of ``root`` (none yet), at most ``limit`` at a time."""
        self.root = root
        self.limit = max(limit, 8)
        self._fds: dict[str, int] = {}  # in order of use, the most recent last

    def parent(self, rel: RelPath, *, create: bool, mode: int = 0o777) -> tuple[int, str]:
        """``(dir_fd, leaf)`` for the normalised ``rel``; the fd stays the cache's."""
        head, _, leaf = rel.rpartition("/")
        return self._dir(head, rel, create=create, mode=mode), leaf

    def _dir(self, path: str, rel: str, *, create: bool, mode: int) -> int:
        fds = self._fds
        fd = fds.pop(path, None)
        if fd is None:
            if path:
                head = path.rpartition("/")[0]
                above = self._dir(head, rel, create=create, mode=mode)
                fd = _open_subdir(above, rel, path, self.root, create=create, mode=mode)
            else:
                fd = _open_root(self.root)
            if len(fds) >= self.limit:
                for old in list(fds)[: len(fds) - self.limit // 2]:
                    os.close(fds.pop(old))
        fds[path] = fd  # the most recently used last
        return fd

    def close(self) -> None:
        """Close every directory held."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


@contextmanager
def open_parent(
    root: AnyPath,
    relpath: str | bytes,
    *,
    create: bool = False,
    mode: int = 0o777,
    cache: ParentCache | None = None,
) -> Iterator[tuple[int, str]]:
    """Open the directory that holds ``relpath``; yield ``(dir_fd, leaf_name)``.

    Each parent below ``root`` is opened relative to the previous one with
    ``O_NOFOLLOW | O_DIRECTORY``, so no symlink is ever followed below the root,
    even one swapped in while this runs. With ``create``, missing parents are
    made (``mode``, minus the umask). The caller opens, renames or unlinks the
    leaf with ``dir_fd=dir_fd`` (and ``O_NOFOLLOW`` when opening); the fd is
    closed on exit.

    Raises :class:`~xoengine.errors.SymlinkedParentError` or
    :class:`~xoengine.errors.ParentNotDirectoryError` for a bad parent,
    :class:`~xoengine.errors.TreeRootMissingError` or
    :class:`~xoengine.errors.TreeRootUnreadableError` for the root. Other
    ``OSError`` (a missing parent without ``create``, no space) propagates
    for the writer to translate, since only it knows what the write was.
    With ``cache`` (for ``root``), parents come from it and stay open.
    """
    rel = normalize_relpath(relpath)
    if cache is not None:  # the fd is the cache's: not closed here
        yield cache.parent(rel, create=create, mode=mode)
        return
    parts = rel.split("/")
    fd = _open_root(root)
    try:
        for depth in range(1, len(parts)):
            child = _open_subdir(fd, rel, "/".join(parts[:depth]), root, create=create, mode=mode)
            fd, parent_fd = child, fd
            os.close(parent_fd)
        yield fd, parts[-1]
    finally:
        os.close(fd)


def _open_subdir(
    dir_fd: int, rel: str, parent: str, root: AnyPath, *, create: bool, mode: int
) -> int:
    name = parent.rpartition("/")[2]
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno not in {errno.ENOTDIR, errno.ELOOP}:
            raise
        _check_parent(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), rel, root, parent)
        raise
    # Made by someone else meanwhile? The open below still refuses a symlink.
    with suppress(FileExistsError):
        as_owner(lambda: os.mkdir(name, mode, dir_fd=dir_fd), dir_fd)
    return _open_subdir(dir_fd, rel, parent, root, create=False, mode=mode)


def _check_parent(st: os.stat_result, rel: str, root: AnyPath, parent: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise SymlinkedParentError(path=rel, root=os.fspath(root), parent=parent)
    if not stat.S_ISDIR(st.st_mode):
        raise ParentNotDirectoryError(path=rel, root=os.fspath(root), parent=parent)


def open_to_others(path: str) -> str | None:
    """Why another user could lead writes under ``path`` elsewhere (None: no one could).

    ``path`` (resolved) and each directory above it must belong to root or to
    this process's user, and be writable by no one else, or sticky (as
    ``/tmp``: no one renames what is not theirs there). Group write is taken
    as the user's own where the group is root's or the process's (a umask of
    002 with a group per user). Where one is not, that
    user may swap a directory on the way for a link (or their own directory)
    between this process's check and its writes: a root process replaying
    there would write, or delete, where that user chose.
    """
    me, group = os.geteuid(), os.getegid()
    at = os.path.realpath(path)
    while True:
        try:
            st = os.stat(at)
        except FileNotFoundError:
            st = None  # made by the writer: its parents decide
        except OSError:
            return None  # this process may not look: the write will say why
        if st is not None and stat.S_ISDIR(st.st_mode):
            if st.st_uid not in {0, me}:
                return f"{at} belongs to another user (uid {st.st_uid})"
            others = stat.S_IWOTH | (stat.S_IWGRP if st.st_gid not in {0, group} else 0)
            if st.st_mode & others and not st.st_mode & stat.S_ISVTX:
                return f"{at} may be written by other users (mode {stat.S_IMODE(st.st_mode):o})"
        above = os.path.dirname(at)
        if above == at:
            return None
        at = above


def check_real_root(root: str, what: str) -> None:
    """Refuse a configured root that now leads elsewhere through a symbolic link.

    A scenario keeps its roots resolved (``os.path.realpath`` at creation). If
    the root, or a directory above it, is a link now (a replica directory
    replaced by a link to another place, the master to the state directory),
    walking or writing through it would work on a tree nobody configured: a
    synchronization would delete what is there and copy the master into it.
    :class:`~xoengine.errors.TreeRootMissingError`; a missing root is left to
    whoever opens it.
    """
    try:
        real = os.path.realpath(root)
        linked = real != root and os.path.lexists(root)
    except OSError as e:  # changed while resolved (a link one moment, gone the next)
        raise TreeRootMissingError(root=root, detail=e.strerror) from e
    if linked:
        raise TreeRootMissingError(
            root=root,
            detail=f"the {what} root leads to {real!r} now, through a symbolic link; a "
            "root is never followed through one: put the directory back, or give the "
            "scenario the new place",
        )


READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""How a file is opened to read its bytes: never through a link, and never waiting (a FIFO
swapped in for a file opens at once, and its ``fstat`` says it is no file; on a file
``O_NONBLOCK`` changes nothing)."""


@contextmanager
def _parent_as_found(
    root: str, relpath: str, cache: ParentCache | None = None
) -> Iterator[tuple[int, str]]:
    """:func:`open_parent` for a path that was listed: a parent replaced since is gone.

    (A ``FileNotFoundError``, as a whole-path call would raise, not a ``PathError``.)
    """
    try:
        with open_parent(root, relpath, cache=cache) as found:
            yield found
    except PathError as e:  # a link or a file there now: not there as listed
        raise FileNotFoundError(errno.ENOENT, e.message, os.path.join(root, relpath)) from e


def open_below(
    root: str, relpath: str, flags: int = READ_FLAGS, cache: ParentCache | None = None
) -> int:
    """Open ``relpath`` under ``root`` (``flags`` as ``os.open``), following no link on the way.

    From its parent directory, opened one directory at a time (:func:`open_parent`;
    kept open in ``cache``, for ``root``, if given): a directory swapped for a
    link while a root process reads (to a file it alone may read) is a vanished
    path, never followed; and so the path may be longer than ``PATH_MAX``. A
    failure is an ``OSError``, as ``os.open``'s, except for the root itself: gone,
    or led elsewhere through a link, it is the scenario's problem, not the path's
    (:class:`~xoengine.errors.TreeRootMissingError`).
    """
    with _parent_as_found(root, relpath, cache) as (fd, leaf):
        return os.open(leaf, flags, dir_fd=fd)


def xattrs_below(
    root: str,
    relpath: str,
    cache: ParentCache | None = None,
    inode: tuple[int, int] | None = None,
) -> Xattrs:
    """:func:`read_xattrs` of ``relpath`` under ``root``, as :func:`open_below` opens it.

    With ``inode`` (``(st_dev, st_ino)``), only that file's: read through an open
    of it (not by its name again), and :class:`FileNotFoundError` where another
    is there now. A link's own (never opened) and a file this process may not
    open are read by name.
    """
    with _parent_as_found(root, relpath, cache) as (fd, leaf):
        if inode is not None:
            try:
                handle = os.open(leaf, READ_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in {errno.ELOOP, errno.EACCES, errno.EPERM}:
                    raise
            else:
                try:
                    st = os.fstat(handle)
                    if (st.st_dev, st.st_ino) != inode:
                        raise FileNotFoundError(errno.ENOENT, "another file there now", relpath)
                    return read_xattrs(handle)
                finally:
                    os.close(handle)
        return read_xattrs(at_fd(fd, leaf))


def open_directory(path: AnyPath) -> int:
    """Open the directory ``path`` following no link: each directory on its way, from ``/``.

    Roots are kept resolved (``realpath``). A directory on the way swapped for a
    link since (by a user who may write above a replica, a master or a replay's
    target, racing a root process) would lead writes or reads elsewhere: it is
    an ``OSError`` (``ELOOP``, or ``ENOTDIR``) naming the path up to it.
    """
    whole = os.path.abspath(os.fsdecode(path))
    fd = os.open("/", _DIR_FLAGS)
    try:
        done = ""
        for name in filter(None, whole.split("/")):
            done += "/" + name
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                e.filename = done
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_root(root: AnyPath) -> int:
    """:func:`open_directory` of a tree's root; a coded error where it cannot be."""
    try:
        return open_directory(root)
    except OSError as e:
        if e.errno in {errno.ELOOP, errno.ENOTDIR} and os.path.islink(e.filename):
            raise TreeRootMissingError(
                root=os.fspath(root),
                detail=f"{e.filename!r} on its way is a symbolic link now: a root is never "
                "followed through one (put the directory back, or give the new place)",
            ) from e
        if isinstance(e, (FileNotFoundError, NotADirectoryError)):
            raise TreeRootMissingError(root=os.fspath(root), detail=e.strerror) from e
        raise TreeRootUnreadableError(root=os.fspath(root), detail=e.strerror) from e


# -- directories without the owner's write permission ---------------------------------

_T = TypeVar("_T")

DIR_WRITE: Final = stat.S_IWUSR | stat.S_IXUSR
"""What the owner needs on a directory to add or remove names in it."""

_GRANTS: Final = threading.RLock()
"""Held from adding bits to a mode until it is put back: two threads working in one
read-only directory never put back a mode the other one still needs."""


@contextmanager
def owner_access(where: int | str, bits: int = DIR_WRITE) -> Iterator[bool]:
    """Add ``bits`` to the mode of ``where`` for the block, if this process owns it; yield if done.

    ``where`` is an open file, or a path (a link itself: left alone). Nothing
    is done where the mode has ``bits`` already or another user owns it. The
    mode is put back after the block unless something set another one
    meanwhile (that one is kept).
    """
    with _GRANTS:
        st = _lstat(where)
        old = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode) or old & bits == bits or st.st_uid != os.geteuid():
            yield False
            return
        os.chmod(where, old | bits)
        try:
            yield True
        finally:
            with suppress(FileNotFoundError):  # a path removed in the block: nothing to put back
                if stat.S_IMODE(_lstat(where).st_mode) == old | bits:
                    os.chmod(where, old)


def _lstat(where: int | str) -> os.stat_result:
    return os.fstat(where) if isinstance(where, int) else os.stat(where, follow_symlinks=False)


def as_owner(call: Callable[[], _T], *dirs: int) -> _T:
    """``call()``; if refused (EACCES), again with ``u+wx`` on the directories ``dirs``.

    ``dirs`` are open directories ``call`` adds or removes names in; each of
    them this process owns gets ``u+wx`` for the second call only
    (:func:`owner_access`). Where none can be given, the refusal is raised.
    """
    try:
        return call()
    except PermissionError as e:
        if e.errno != errno.EACCES or not dirs:
            raise
        refused = e
    with _GRANTS, ExitStack() as stack:
        granted = [stack.enter_context(owner_access(fd)) for fd in dirs]  # each one, not any
        if not any(granted):
            raise refused
        return call()


# -- filters ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Rule:
    match: Callable[[str], object]
    whole_path: bool
    dir_only: bool

    def matches(self, relpath: str, name: str, *, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        return self.match(relpath if self.whole_path else name) is not None


def _compile(pattern: Pattern) -> _Rule:
    text = os.fsdecode(pattern)
    body = text.rstrip("/")
    dir_only = body != text
    anywhere = ""
    if body.startswith("/"):
        body, whole_path = body.lstrip("/"), True
    else:
        while body.startswith("**/"):
            body, anywhere = body[3:], "(?:.*/)?"
        whole_path = "/" in body
    if not body or "\0" in body:
        raise ConfigurationError(detail=f"the filter pattern {text!r} matches nothing")
    regex = re.compile(anywhere + fnmatch.translate(body), re.DOTALL)
    return _Rule(regex.match, whole_path=whole_path, dir_only=dir_only)


class PathFilter:
    """Include and exclude glob patterns, as the walker applies them.

    Patterns are ``fnmatch`` globs (``*``, ``?``, ``[...]``), case-sensitive,
    given as str or bytes (bytes are :func:`os.fsdecode`-d). ``*`` also matches
    ``/``. Like ``.gitignore``:

    - a pattern with no ``/`` matches the base name at any depth (``*.tmp``);
    - a trailing ``/`` matches directories only (``cache/``);
    - a ``/`` elsewhere anchors it at the root: it matches the whole relpath
      (``/build`` matches ``build`` but not ``sub/build``; ``logs/*.gz``
      matches ``logs/x.gz`` and ``logs/old/y.gz`` but not ``sub/logs/x.gz``);
    - a leading ``**/`` means "at any depth" (``**/node_modules``,
      ``**/cache/*.bin``).

    A path is selected when no exclude pattern matches it or any of its
    parents (an excluded directory is not descended), and, if there are
    include patterns, when one matches it or one of its parents. Include
    patterns narrow files, symlinks and specials only: directories are always
    reported and descended unless excluded, so ``include=["*.py"]`` still
    finds ``pkg/mod.py``. Exclude wins over include.
    """

    __slots__ = ("_exclude", "_include")

    def __init__(self, include: Iterable[Pattern] = (), exclude: Iterable[Pattern] = ()) -> None:
        """Compile the patterns; a pattern that matches nothing is a ConfigurationError."""
        self._include = tuple(_compile(p) for p in include)
        self._exclude = tuple(_compile(p) for p in exclude)

    def selects(self, relpath: str | bytes, *, is_dir: bool) -> bool:
        """Return whether a walk over a tree holding ``relpath`` would report it."""
        parts = normalize_relpath(relpath).split("/")
        included = False
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if self._excludes(parent, parts[depth - 1], is_dir=True):
                return False
            included = included or self._includes(parent, parts[depth - 1], is_dir=True)
        rel, name = "/".join(parts), parts[-1]
        if self._excludes(rel, name, is_dir=is_dir):
            return False
        return is_dir or included or self._includes(rel, name, is_dir=is_dir)

    def _excludes(self, relpath: str, name: str, *, is_dir: bool) -> bool:
        return any(rule.matches(relpath, name, is_dir=is_dir) for rule in self._exclude)

    def _includes(self, relpath: str, name: str, *, is_dir: bool) -> bool:
        if not self._include:
            return True
        return any(rule.matches(relpath, name, is_dir=is_dir) for rule in self._include)


# -- the walker -----------------------------------------------------------------------


class Entry(NamedTuple):
    """One thing found by :func:`walk`, as ``lstat`` saw it (links are never followed).

    A named tuple, not a frozen dataclass: a walk makes one per path, and a
    no-change capture pass of 10,000 files spent a tenth of its time building
    them (a tuple is built ~5x faster).

    ``size`` is the file size for files, the target length for symlinks and
    what the file system says for the rest. ``mode`` holds the permission
    bits only (``stat.S_IMODE``, setuid/setgid/sticky included). ``target``
    is the symlink's target as :func:`os.readlink` gave it, fsdecoded like a
    relpath (byte-exact); it may be absolute, dangling or lead outside the
    root, and it is ``None`` for everything but symlinks.
    """

    relpath: RelPath
    kind: Kind
    size: int
    mode: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    dev: int
    nlink: int
    uid: int
    gid: int
    target: str | None = None

    @property
    def name(self) -> str:
        """The last part of :attr:`relpath`."""
        return self.relpath.rpartition("/")[2]


@dataclass(slots=True)
class _Frame:
    fd: int
    prefix: str
    names: list[str]
    included: bool
    index: int = 0


def _kind(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


def _list(fd: int) -> list[str]:
    return sorted(os.listdir(fd), key=os.fsencode)


class Walk(Iterator[Entry]):
    """An iterator over the entries under a root; made by :func:`walk`.

    Order: depth first, a directory right before its contents, siblings in
    byte order of their names; the root itself is not reported. The same tree
    always gives the same sequence.

    Symlinks are reported, never followed, so links to directories, outside
    the root, dangling or in loops are just entries. Each directory is opened
    with ``O_NOFOLLOW`` relative to its parent's fd and checked to be the inode
    that was listed, so a directory swapped for a symlink mid-walk cannot lead
    the walk outside the root. One fd is held per level of depth until the
    walk ends or :meth:`close` is called (also on ``with`` exit).

    The root must be a readable directory (a symlink to one is followed):
    otherwise constructing the walk raises
    :class:`~xoengine.errors.TreeRootMissingError` or
    :class:`~xoengine.errors.TreeRootUnreadableError` -- never an empty walk.
    Below the root nothing raises: an entry that vanishes or is replaced is
    skipped with an :class:`~xoengine.errors.EntryVanishedWarning`; one that
    cannot be read, with an :class:`~xoengine.errors.EntryUnreadableWarning`.
    Both land in :attr:`warnings`. A directory that cannot be listed is still
    reported, and its relpath is added to :attr:`unlisted`: its contents are
    unknown, not empty, so a sync must not delete anything below it.
    """

    def __init__(
        self,
        root: AnyPath,
        include: Iterable[Pattern] = (),
        exclude: Iterable[Pattern] = (),
        *,
        reserved: str = "",
    ) -> None:
        """Open and list the root; see :func:`walk`."""
        self._stack: list[_Frame] = []
        self.root = root
        self.warnings: list[TreeWarning] = []
        self.unlisted: list[RelPath] = []
        self._filter = PathFilter(include, exclude)
        self._reserved = reserved
        fd = _open_root(root)
        try:
            names = _list(fd)
        except OSError as e:
            os.close(fd)
            raise TreeRootUnreadableError(root=os.fspath(root), detail=e.strerror) from e
        self._stack.append(_Frame(fd, "", names, included=False))

    def __next__(self) -> Entry:
        """Return the next entry (see the class docstring for the order)."""
        while self._stack:
            frame = self._stack[-1]
            if frame.index == len(frame.names):
                self._stack.pop()
                os.close(frame.fd)
                continue
            name = frame.names[frame.index]
            frame.index += 1
            entry = self._visit(frame, name)
            if entry is not None:
                return entry
        raise StopIteration

    def close(self) -> None:
        """Release the directory fds; the walk then ends. Safe to call twice."""
        while self._stack:
            os.close(self._stack.pop().fd)

    def __enter__(self) -> Self:
        """Return the walk itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the walk."""
        self.close()

    def __del__(self) -> None:
        """Close fds of a walk that was dropped before its end."""
        self.close()

    def _visit(self, frame: _Frame, name: str) -> Entry | None:
        relpath = frame.prefix + name
        if self._reserved and name.startswith(self._reserved):
            self.warnings.append(ReservedNameSkippedWarning(path=relpath))
            return None
        try:
            st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
        except OSError as e:
            self._skip(relpath, e)
            return None
        kind = _kind(st.st_mode)
        is_dir = kind == "dir"
        if self._filter._excludes(relpath, name, is_dir=is_dir):
            return None
        if is_dir:
            included = frame.included or self._filter._includes(relpath, name, is_dir=True)
            return (
                entry_from_stat(relpath, kind, st)
                if self._descend(frame, name, st, included)
                else None
            )
        if not (frame.included or self._filter._includes(relpath, name, is_dir=False)):
            return None
        if kind == "symlink":
            return self._symlink(frame, name, st)
        return entry_from_stat(relpath, kind, st)

    def _symlink(self, frame: _Frame, name: str, st: os.stat_result) -> Entry | None:
        try:
            target = os.readlink(name, dir_fd=frame.fd)
        except OSError as e:
            # EINVAL: no longer a symlink, so it was replaced after the stat.
            self._skip(frame.prefix + name, e, gone=e.errno in _GONE | {errno.EINVAL})
            return None
        return entry_from_stat(frame.prefix + name, "symlink", st, target)

    def _descend(self, frame: _Frame, name: str, st: os.stat_result, included: bool) -> bool:
        """Push the directory's frame; False when it is gone (then it is not reported)."""
        relpath = frame.prefix + name
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=frame.fd)
        except OSError as e:
            self._skip(relpath, e, gone=e.errno in _GONE, listing=True)
            return e.errno not in _GONE
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)
                self.warnings.append(
                    EntryVanishedWarning(path=relpath, detail="replaced by another directory")
                )
                return False
            names = _list(fd)
        except OSError as e:
            os.close(fd)
            self._skip(relpath, e, gone=False, listing=True)
            return True
        self._stack.append(_Frame(fd, relpath + "/", names, included))
        return True

    def _skip(
        self, relpath: str, error: OSError, *, gone: bool | None = None, listing: bool = False
    ) -> None:
        if gone is None:
            gone = error.errno == errno.ENOENT
        if gone:
            self.warnings.append(EntryVanishedWarning(path=relpath, detail=error.strerror))
            return
        if listing:
            self.unlisted.append(relpath)
        detail = f"{error.strerror}{' (its contents are unknown)' if listing else ''}"
        self.warnings.append(EntryUnreadableWarning(path=relpath, detail=detail, errno=error.errno))


def entry_from_stat(
    relpath: str, kind: Kind, st: os.stat_result, target: str | None = None
) -> Entry:
    """The :class:`Entry` for an ``lstat`` result (how the walker reports what it sees)."""
    return Entry(
        relpath=relpath,
        kind=kind,
        size=st.st_size,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        inode=st.st_ino,
        dev=st.st_dev,
        nlink=st.st_nlink,
        uid=st.st_uid,
        gid=st.st_gid,
        target=target,
    )


def walk(
    root: AnyPath,
    include: Iterable[Pattern] = (),
    exclude: Iterable[Pattern] = (),
    *,
    reserved: str = "",
) -> Walk:
    """Walk the tree under ``root``: the one walker for scans, sync and verification.

    ``include`` and ``exclude`` are glob patterns (:class:`PathFilter` has the
    rules). ``reserved``: a name beginning with it is left out (a directory with
    what it holds), with a :class:`~xoengine.errors.ReservedNameSkippedWarning`.
    Iterate the result for :class:`Entry` objects, then read its ``warnings``
    and ``unlisted``; see :class:`Walk` for order and errors.
    """
    return Walk(root, include, exclude, reserved=reserved)


def stat_entry(
    root: AnyPath, relpath: str | bytes, cache: ParentCache | None = None
) -> Entry | None:
    """The :class:`Entry` for one path under ``root`` as :func:`walk` would report it.

    None if it does not exist (or a parent is missing). Parents are opened
    without following symlinks (:func:`open_parent`), like the walker does;
    through ``cache`` (a :class:`ParentCache` of ``root``) for many paths.
    """
    rel = normalize_relpath(relpath)
    try:
        with open_parent(root, rel, cache=cache) as (fd, leaf):
            st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
            kind = _kind(st.st_mode)
            target = os.fsdecode(os.readlink(leaf, dir_fd=fd)) if kind == "symlink" else None
    except (FileNotFoundError, NotADirectoryError, PathError):
        return None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a name no file system holds: nothing there
            return None
        raise
    return entry_from_stat(rel, kind, st, target)


# -- birth times (statx) -----------------------------------------------------------------

_STATX_BTIME: Final = 0x800
_AT_SYMLINK_NOFOLLOW: Final = 0x100
_STATX_SIZE: Final = 256
_STATX_MASK = Struct("=I")  # stx_mask, at offset 0
_STATX_BTIME_AT: Final = 80  # struct statx_timestamp stx_btime: s64 seconds, u32 nanoseconds
_STATX_STAMP = Struct("=qI")


def _find_statx() -> Callable[..., int] | None:
    try:
        statx = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_char_p]
    statx.restype = ctypes.c_int
    result: Callable[..., int] = statx
    return result


_statx = _find_statx()


def birth_ns(root: AnyPath, relpath: str | bytes, cache: ParentCache | None = None) -> int | None:
    """When the inode at ``relpath`` was created (ns), or None where that is not known.

    The birth time tells a renamed file from a new file that got the inode
    number of a deleted one (ext4 hands freed inode numbers out again at
    once): a rename keeps the birth time, a new inode gets a new one. None
    without ``statx`` in the C library, on file systems that keep no birth
    time (ext4 with 128-byte inodes, most network file systems) and for a
    path that is gone. ``cache`` (for ``root``): its directories, kept open.
    """
    if _statx is None:
        return None
    buffer = ctypes.create_string_buffer(_STATX_SIZE)
    try:
        with open_parent(root, normalize_relpath(relpath), cache=cache) as (fd, leaf):
            if _statx(fd, os.fsencode(leaf), _AT_SYMLINK_NOFOLLOW, _STATX_BTIME, buffer) != 0:
                return None
    except (OSError, PathError):
        return None
    raw = buffer.raw
    if not _STATX_MASK.unpack_from(raw, 0)[0] & _STATX_BTIME:
        return None
    seconds, nanos = _STATX_STAMP.unpack_from(raw, _STATX_BTIME_AT)
    return int(seconds) * 1_000_000_000 + int(nanos)


# -- extended attributes ----------------------------------------------------------

Xattrs: TypeAlias = dict[str, bytes]
"""Extended attributes of one path: name (``os.fsdecode`` form) -> value, sorted by name."""

CAPABILITY: Final = "security.capability"
"""A file's capabilities: the kernel drops them when the file is written, truncated or
given another owner (on the master and on a replica alike)."""

_NO_XATTRS: Final = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})


def at_fd(fd: int, leaf: str) -> str:
    """A path naming ``leaf`` in the open directory ``fd`` (for calls that take no ``dir_fd``).

    ``/proc/self/fd/N`` is the directory the fd holds, wherever it has moved:
    what comes before ``leaf`` is never looked up again, so a symlink swapped
    into the parents since they were opened is not followed.
    """
    return f"/proc/self/fd/{fd}/{leaf}"


def own_meta(root: str) -> dict[str, Any]:
    """``mode``, ``owner`` (``[uid, gid]``) and ``xattrs`` of the directory ``root`` itself.

    What a scenario keeps of a root (resolved: no link on its way is followed).
    Read through one open of it; :class:`OSError` if it cannot be.
    """
    fd = open_directory(root)
    try:
        st = os.fstat(fd)
        return {
            "mode": stat.S_IMODE(st.st_mode),
            "owner": [st.st_uid, st.st_gid],
            "xattrs": read_xattrs(fd),
        }
    finally:
        os.close(fd)


def read_xattrs(path: str | int) -> Xattrs:
    """Every extended attribute of ``path`` (an open file, or a path: a link itself, not followed).

    The namespaces the process may read: all of them as root (``user``,
    ``trusted``, ``security``: file capabilities, SELinux labels, Samba's NT
    ACLs; ``system``: POSIX ACLs), ``user`` and ``security`` otherwise. Empty
    where the file system keeps none. An attribute removed between the listing
    and its read is left out; :class:`FileNotFoundError` (the path is gone) is raised.
    """
    if isinstance(path, str) and not path.startswith("/proc/self/fd/"):
        # Named from its parent, opened one directory at a time: no link on the way is
        # followed (one swapped in would give another file's attributes, a capability
        # set among them), and the path may be longer than PATH_MAX.
        return xattrs_below("/", os.path.abspath(path).lstrip("/"))
    follow = isinstance(path, int)  # an fd has nothing to follow
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as e:
        if e.errno in _NO_XATTRS:
            return {}
        raise
    found: Xattrs = {}
    for name in sorted(names, key=os.fsencode):
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=follow)
        except OSError as e:
            if e.errno not in {errno.ENODATA, *_NO_XATTRS}:
                raise
    return found
