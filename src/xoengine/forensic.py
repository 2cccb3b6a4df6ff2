"""Forensics from the journal alone: replay, history, diff and last-good search.

Room: producers and projections. May import ``errors``, ``codec``, ``events``,
``tree`` and ``walk``. Needs nothing but a :class:`JournalSource` (the engine
gives one over its journal, which may be a read-only copy from another
machine): no master, no replica.

The state of any file at any position is the fold of its events up to that
position. A replay folds metadata over the scenario's file events up to the
position (which file identities are alive, where, with which mode), then
rebuilds the content of each wanted file from its own content events
(byte ranges from the blob table, truncations, deltas) straight at its final
path, so renames cost nothing. Each byte comes from the newest write that
covers it (:class:`~xoengine.tree.Extents`): only blobs that still contribute
are read, and each file is written once, in one open.

Questions about some paths (the replay of a file or subtree, ``history``,
``contents``) fold only the events that make, move or end paths
(:data:`PATH_EVENTS`, found by the journal's topic index), then read the
events of the identities they need by identity (the journal's stream index):
their time and memory follow the tree's shape and the answer, not the
journal's length.
"""

from __future__ import annotations

import bisect as bisection
import contextlib
import dataclasses
import errno
import itertools
import mmap
import numbers
import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

from xoengine.blobtable import BlobTable
from xoengine.blocks import coalesce_ranges
from xoengine.datastore import make_directory
from xoengine.errors import (
    ConfigurationError,
    DiskFullError,
    FrameError,
    InvalidRelPathError,
    NoFileAtError,
    OutputLocationError,
    XoError,
)
from xoengine.events import (
    FILE_EVENTS,
    BytesWritten,
    ContentReplaced,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileRenamed,
    FileTruncated,
    MetadataChanged,
    RootChanged,
    XattrsChanged,
    event_bytes,
    observed_owner,
    root_label,
)
from xoengine.journal import iso_time
from xoengine.tree import TMP_PREFIX, Extents, ReplicaTree, event_delta
from xoengine.walk import Xattrs, normalize_relpath, read_xattrs

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable, Iterator, Sequence

__all__ = [
    "BURST_WINDOW_S",
    "CONTENT_CHANGES",
    "PATH_EVENTS",
    "UNFINISHED_REPLAY",
    "BisectResult",
    "DiffResult",
    "Forensics",
    "HeldSpan",
    "HistoryEntry",
    "JournalSource",
    "LiveFile",
    "ReplayResult",
]


PATH_EVENTS: Final = (FileCreated, FileRenamed, FileDeleted)
"""The file events that make, move or end a path: a fold of them alone knows every path."""
_META_NAMES: Final = ("mode", "mtime", "owner")  # the order of _user_meta
_YEAR_S: Final = 366 * 24 * 3600  # the widest burst window taken


class JournalSource(Protocol):
    """The smallest view of a journal that forensics needs."""

    def file_events(
        self,
        scenario: str,
        upto: int | None,
        *,
        after: int = 0,
        kinds: tuple[type[FileEvent], ...] = FILE_EVENTS,
    ) -> Iterator[tuple[int, int, FileEvent]]:
        """``(position, time label ns, event)`` of ``scenario``'s file events in ``(after, upto]``.

        Only events of ``kinds`` (the others are not decoded).
        """

    def file_stream(
        self, file_id: uuid.UUID, upto: int | None
    ) -> Iterator[tuple[int, int, FileEvent]]:
        """The same for one file identity's events, read by identity (not by a scan)."""

    def file_stream_newest_first(
        self, file_id: uuid.UUID, upto: int | None
    ) -> Iterator[tuple[int, int, FileEvent]]:
        """:meth:`file_stream` newest first (each decoded only when it is asked for)."""

    def root_events(
        self, scenario: str, upto: int | None, *, after: int = 0
    ) -> Iterator[tuple[int, int, RootChanged]]:
        """The same for the changes of ``scenario``'s roots' own metadata."""

    def blob(self, blob_id: bytes) -> bytes | memoryview:
        """The verified bytes of a blob."""

    def last_position(self) -> int:
        """The journal's last position now (0: empty): where "the end" is, for one answer."""


UNFINISHED_REPLAY: Final = TMP_PREFIX + "replay-unfinished"
"""The file a replay keeps in its output directory until the tree is whole."""

_UNFINISHED_TEXT: Final = (
    "This directory holds a replay that did not finish (its process was killed):\n"
    "files may be missing or hold other bytes. Discard it and replay again.\n"
)

_DEFAULT_ACL: Final = "system.posix_acl_default"
"""A directory's ACL that the paths made in it inherit."""

_FOLD_MAX: Final = 250_000
"""A whole-tree replay at a position up to this folds every event at once (the fastest
way, and each live file's content events are held until it is written); past it,
each identity is read from its own events as it is written (bounded memory)."""

BURST_WINDOW_S: Final = 60.0
"""A bisect's burst: the files damaged by commits within this many seconds count together."""

_DECODED_MAX: Final = 250_000
"""A bisect keeps at most this many decoded file events for its probes (each is a few
hundred bytes); with more, each probe decodes the journal again."""


class _Decoded:
    """A :class:`JournalSource` over one scenario's file events up to ``limit``, decoded once.

    A bisect folds many prefixes of the same history: decoding is most of a
    fold's cost, so its probes share one decoded list. Anything else is read
    from ``source``.
    """

    def __init__(
        self,
        source: JournalSource,
        scenario: str,
        limit: int,
        events: list[tuple[int, int, FileEvent]],
    ) -> None:
        self._source = source
        self._scenario = scenario
        self._limit = limit
        self._events = events
        self._positions = [position for position, _, _ in events]
        self._streams: dict[uuid.UUID, list[tuple[int, int, FileEvent]]] | None = None

    def file_events(
        self,
        scenario: str,
        upto: int | None,
        *,
        after: int = 0,
        kinds: tuple[type[FileEvent], ...] = FILE_EVENTS,
    ) -> Iterator[tuple[int, int, FileEvent]]:
        if scenario != self._scenario or upto is None or upto > self._limit:
            return self._source.file_events(scenario, upto, after=after, kinds=kinds)
        first = bisection.bisect_right(self._positions, after)
        last = bisection.bisect_right(self._positions, upto)
        return (item for item in self._events[first:last] if isinstance(item[2], kinds))

    def file_stream(
        self, file_id: uuid.UUID, upto: int | None
    ) -> Iterator[tuple[int, int, FileEvent]]:
        if upto is None or upto > self._limit:
            return self._source.file_stream(file_id, upto)
        if self._streams is None:
            self._streams = {}
            for item in self._events:
                self._streams.setdefault(item[2].originator_id, []).append(item)
        return itertools.takewhile(lambda item: item[0] <= upto, self._streams.get(file_id, []))

    def file_stream_newest_first(
        self, file_id: uuid.UUID, upto: int | None
    ) -> Iterator[tuple[int, int, FileEvent]]:
        return reversed(list(self.file_stream(file_id, upto)))

    def root_events(
        self, scenario: str, upto: int | None, *, after: int = 0
    ) -> Iterator[tuple[int, int, RootChanged]]:
        return self._source.root_events(scenario, upto, after=after)

    def blob(self, blob_id: bytes) -> bytes | memoryview:
        return self._source.blob(blob_id)

    def last_position(self) -> int:
        return self._source.last_position()


@dataclass
class LiveFile:
    """One file identity as the fold sees it at a position."""

    file_id: uuid.UUID
    path: str
    kind: str
    mode: int
    mtime_ns: int
    size: int = 0
    target: str | None = None
    content: list[tuple[int, FileEvent]] = field(default_factory=list)
    owner: list[int] | None = None
    """``[uid, gid]`` (None: the journal does not say, as in journals before owners)."""
    xattrs: Xattrs | None = None
    """Extended attributes (None: the journal never gave them: none)."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay rebuilt.

    ``bytes``: the bytes of the journaled writes it folded (written ranges and
    delta literals of the files rebuilt), whether or not a later write covered
    them; not the size of the output tree.
    """

    position: int
    files: int
    dirs: int
    links: int
    bytes: int


@dataclass(frozen=True)
class HistoryEntry:
    """One change to a path's file identity."""

    position: int
    time: str
    operation: str
    path: str
    new_path: str | None
    ranges: list[list[int]]
    size: int | None
    moved_with: str | None = None  # "old -> new" of the directory whose rename moved it
    file_id: str = ""  # the identity changed: a path deleted and made again is a new one
    target: str | None = None  # where a created symbolic link points
    mode: int | None = None  # permission bits set by a creation or a metadata change
    owner: list[int] | None = None  # [uid, gid] after the change, where the journal says
    xattrs: dict[str, str] | None = None  # name -> value (hex) after an "xattrs" change
    mtime: str | None = None
    """The path's modification time, as the master's ``lstat`` gave it after the change.

    ``time`` is when the journal recorded the change; ``mtime`` is what the
    file says, which any writer may set (``touch -d``). None where the
    journal holds no stat (deletions, moves with a directory, old journals).
    """
    ctime: str | None = None
    """The path's status-change time from the same ``lstat``: the kernel sets it at
    every change (a chmod, a rename, a new link too), and no user call sets it back.
    A write whose ``mtime`` lies before the ``time`` of the file's previous entry had
    its modification time set back (the journal saw other bytes then), unless the
    clock stepped back in between (labels stay flat then; see the user guide).
    """
    changed: list[str] | None = None
    """For a ``metadata`` entry: which of ``mode``, ``mtime`` and ``owner`` it moved.

    Empty: only the ``ctime`` moved, with nothing a user sets (a rename of the
    file, a hard link made or removed, a chmod or touch to the same value): the
    capture journals the new ``lstat`` so that it can tell the next change.
    For a write, truncation or replacement that also moved the mode (a chmod
    the same capture saw: it journals the content, whose ``lstat`` holds the
    new mode), what it moved, and ``mode`` is the new one. None otherwise.
    """


@dataclass(frozen=True)
class HeldSpan:
    """The changes that bound the bytes one path held at one position.

    ``since``: the change that gave the path those bytes (its creation, its
    last write, truncation or delta, or the rename that moved the file there),
    at or before ``position``. ``until``: the first change after ``position``
    that took them away (a write, a truncation, a delta, the file's deletion or
    its rename elsewhere); None if the path holds them at the journal's end.
    The master held those bytes from ``since`` to ``until`` as far as the
    journal saw: a change is journaled when a capture sees it, so it was made
    before its own entry's time (and, by its ``ctime``, when).
    """

    position: int
    since: HistoryEntry
    until: HistoryEntry | None


CONTENT_CHANGES: Final = frozenset({"written", "truncated", "replaced"})
"""The history operations that change a file's bytes."""


@dataclass(frozen=True)
class DiffResult:
    """Paths added, removed, modified (with byte ranges) and renamed between two positions."""

    from_position: int
    to_position: int
    added: list[str]
    removed: list[str]
    modified: dict[str, list[list[int]]]
    renamed: dict[str, str]
    metadata: list[str]
    """Paths of the same identity at both ends, bytes untouched, whose mode, mtime,
    owner or extended attributes differ (a rename alone, or a chmod and back, is no
    difference)."""
    roots: list[str] = field(default_factory=list)
    """Roots whose own mode, owner or extended attributes differ ("." for the one root)."""


@dataclass(frozen=True)
class BisectResult:
    """The last position where the predicate held, and how it was found."""

    last_good: int
    first_bad: int | None
    probes: list[tuple[int, bool]]
    burst_position: int | None
    burst_files: int


def _check_blob_length(live: LiveFile, blob_id: bytes, length: int) -> None:
    """Refuse a write that takes another length than its blob holds (its id says)."""
    if (
        not isinstance(blob_id, bytes)
        or len(blob_id) != BlobTable.ID_SIZE
        or length != BlobTable.size_of(blob_id)
    ):
        raise FrameError(
            position=live.path,
            detail=f"a write takes {length!r} bytes of blob {blob_id!r}, which holds another "
            "length",
        )


def _names_root(path: str | bytes) -> bool:
    """Whether ``path`` names the root (``.``, ``/`` or nothing) rather than a path below it.

    Anything but a str or bytes path is the coded error of :func:`normalize_relpath`.
    """
    if not isinstance(path, str | bytes):
        normalize_relpath(path)  # raises InvalidRelPathError
    return os.fsdecode(path).strip("/") in {"", "."}


def _observed_time(event: FileEvent, index: int) -> str | None:
    """Element ``index`` of the event's ``observed`` stat (2: mtime, 3: ctime), as ISO."""
    return iso_time(event.observed[index]) if len(event.observed) > index else None


def _user_meta(live: LiveFile | None) -> tuple[object, ...]:
    """What a user sets on a file identity: mode, mtime, owner, extended attributes."""
    if live is None:
        return ()
    return live.mode, live.mtime_ns, live.owner, live.xattrs or {}  # none ever set, or all removed


def _root_meta(event: RootChanged) -> tuple[int, list[int], dict[str, bytes]]:
    return event.mode, event.owner, event.xattrs


def _ranges(event: FileEvent, before: int | None = None) -> list[list[int]]:
    """The ``[offset, length]`` byte ranges an event changed.

    A truncation changed the bytes between the size ``before`` it and its own
    (the tail cut off, or the zeros it added); where the size before is not
    known (or the same), it is ``[size, 0]``: cut at ``size``. A write or a
    delta that moved the file's end changed the bytes between its size and
    ``before`` too: the tail a capture saw cut (``truncate``, ``>``), or the
    zeros a write past the end left before its own bytes (``seek``, ``write``).
    A delta changed its new bytes and the old bytes it copied to another
    offset (a block copied over another, a hole punched where zeros were
    elsewhere): the delta copies a block from elsewhere only when the block
    at its own offset differs. The ranges are sorted, and merged where they
    touch.
    """
    out: list[Sequence[int]] = []
    size: int | None = None
    if isinstance(event, BytesWritten):
        out, size = list(event.ranges), event.size
    elif isinstance(event, ContentReplaced):
        offset = 0
        for op in event.ops:
            if op[0] == "data" or op[1] != offset:
                out.append((offset, op[2]))
            offset += op[2]
        size = offset
    elif isinstance(event, FileTruncated):
        low, high = sorted((event.size, event.size if before is None else before))
        return [[low, high - low]]
    if size is not None and before is not None and size != before:
        out.append((min(size, before), abs(size - before)))
    return _merged(out)


def _merged(ranges: Iterable[Sequence[int]]) -> list[list[int]]:
    """``ranges`` sorted and merged where they touch, as the ``[offset, length]`` lists shown."""
    return [[start, length] for start, length in coalesce_ranges(ranges)]


def _moves(event: ContentReplaced) -> bool:
    """Whether a delta copies old bytes to another offset (not an extent map over the old)."""
    cursor = 0
    for op in event.ops:
        if op[0] == "copy" and op[1] != cursor:
            return True
        cursor += op[2]
    return False


def _size_after(events: list[FileEvent], size: int) -> int:
    """The size of a file of ``size`` bytes after its content ``events``."""
    for event in events:
        if isinstance(event, ContentReplaced):
            size = sum(op[2] for op in event.ops)
        elif isinstance(event, (BytesWritten, FileTruncated)):
            size = event.size
    return size


def _event_size(event: FileEvent | None) -> int | None:
    size = getattr(event, "size", None)
    return size if isinstance(size, int) else None


def _operation(event: FileEvent) -> str:
    return {
        FileCreated: "created",
        BytesWritten: "written",
        FileTruncated: "truncated",
        ContentReplaced: "replaced",
        FileRenamed: "renamed",
        FileDeleted: "deleted",
        MetadataChanged: "metadata",
        XattrsChanged: "xattrs",
    }.get(type(event), type(event).__name__)


def _make_target(target: Path) -> list[Path]:
    """Make the replay target ``target``; return the directories made, deepest first."""
    return make_directory(target, "make the replay target", "the replay target was not made")


class Forensics:
    """Replay, history, diff and bisect for one scenario over a :class:`JournalSource`."""

    def __init__(self, source: JournalSource, scenario: str) -> None:
        """Investigate ``scenario`` in ``source``."""
        self.source = source
        self.scenario = scenario

    # -- the fold -------------------------------------------------------------------------

    def fold(self, position: int | None) -> dict[uuid.UUID, LiveFile]:
        """Every file identity alive at ``position`` (None: the end), with its content events."""
        alive: dict[uuid.UUID, LiveFile] = {}
        for pos, _, event in self.source.file_events(self.scenario, position):
            self._step(alive, pos, event)
        return alive

    def paths(self, position: int | None) -> dict[uuid.UUID, LiveFile]:
        """Every file identity alive at ``position``: its path and kind only.

        The fold of :data:`PATH_EVENTS` alone; mode, size, owner and content
        are what the creation said (see :meth:`live` for the rest).
        """
        alive: dict[uuid.UUID, LiveFile] = {}
        for pos, _, event in self.source.file_events(self.scenario, position, kinds=PATH_EVENTS):
            self._step(alive, pos, event)
        return alive

    def live(self, file_id: uuid.UUID, position: int | None) -> LiveFile | None:
        """One file identity as at ``position`` (None if not alive then), from its own events.

        Its path is the one its own events give: a directory renamed above it
        moves it without an event of its own (:meth:`paths` has it).
        """
        alive: dict[uuid.UUID, LiveFile] = {}
        for pos, _, event in self.source.file_stream(file_id, position):
            self._step(alive, pos, event)
        return alive.get(file_id)

    @staticmethod
    def _step(
        alive: dict[uuid.UUID, LiveFile], position: int, event: FileEvent
    ) -> list[tuple[uuid.UUID, str]]:
        """Fold ``event`` into ``alive``.

        Returns ``(file id, old path)`` of what the rename of a directory moved
        with it (the renamed identity itself not included); else nothing.
        """
        fid = event.originator_id
        if isinstance(event, FileCreated):
            alive[fid] = LiveFile(
                fid,
                event.path,
                event.kind,
                event.mode,
                event.mtime_ns,
                target=event.target,
                owner=observed_owner(event.observed),
            )
            return []
        live = alive.get(fid)
        if live is None:
            return []
        if isinstance(event, FileDeleted):
            del alive[fid]
            return []
        if isinstance(event, FileRenamed):
            old, new = live.path, event.new_path
            live.path = new
            if live.kind != "dir":  # nothing moves with it (a look at every alive path, else)
                return []
            moved = []
            below = old + "/"
            for key, other in alive.items():  # the path first: a match is rare
                if (other.path == old or other.path.startswith(below)) and key != fid:
                    moved.append((key, other.path))
                    other.path = new + other.path[len(old) :]
            return moved
        if isinstance(event, MetadataChanged):
            live.mode, live.mtime_ns = event.mode, event.mtime_ns
        elif isinstance(event, XattrsChanged):
            live.xattrs = event.xattrs
        elif isinstance(event, (BytesWritten, FileTruncated, ContentReplaced)):
            live.size = event.size
            live.content.append((position, event))
        if event.observed:
            live.size, live.mode, live.mtime_ns = (
                event.observed[0],
                event.observed[1],
                event.observed[2],
            )
            live.owner = observed_owner(event.observed) or live.owner
        return []

    # -- replay ---------------------------------------------------------------------------

    def replay(
        self,
        to: str | os.PathLike[str],
        position: int | None,
        path: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult:
        """Rebuild the tree (or the file or subtree at ``path``) as at ``position`` into ``to``.

        ``progress(done, total)`` follows each file written (entries of the tree).

        ``to`` must be new or empty: a replay over other files would mix them
        into the tree it claims to show. A replay that fails (a damaged blob, a
        full disk, an interruption) removes what it wrote, the directories it made
        for ``to`` too: they are left as found. A ``to`` that cannot be made is
        :class:`~xoengine.errors.OutputLocationError` (or ``DiskFullError``).
        """
        target = Path(to)
        try:
            link = target.is_symlink()
            taken = target.exists() and (not target.is_dir() or any(target.iterdir()))
        except OSError as e:  # a name too long, a place this user may not look into
            raise OutputLocationError(
                action="replay into", path=str(target), detail=e.strerror or str(e)
            ) from None
        if link or taken:
            why = "a symbolic link (never followed)" if link else "not an empty directory"
            if not link and (target / UNFINISHED_REPLAY).is_file():
                why += f" (it holds a replay that did not finish: {UNFINISHED_REPLAY})"
            raise ConfigurationError(
                detail=f"replay target {target} is {why}: replay into a new directory"
            )
        if position is None:  # one instant for every read of the answer
            position = self.source.last_position()
        if path == "":  # not the whole tree by accident (a variable left empty)
            raise InvalidRelPathError(path=path, detail="empty: give no path for the whole tree")
        wanted = None if path is None or path == "." else normalize_relpath(path)
        selected, load = self._selected(position, wanted)
        # The roots' own metadata: every root's for the tree, a root's own when it is
        # the path asked for (a root of several), none under one.
        roots = {
            name: event
            for name, event in self.roots(position).items()
            if wanted is None or (name and name == wanted)
        }
        if wanted is not None and not selected and not roots:  # never an empty answer
            raise NoFileAtError(
                f"Nothing was at {wanted!r} at position {position} "
                "(`history` says when something was).",
                path=wanted,
                position=position,
                detail="nothing was there",
            )
        at = next((live for live in selected if live.path == wanted), None)
        if path is not None and path.endswith("/") and at is not None and at.kind != "dir":
            raise NoFileAtError(  # "x/" names a directory, as a shell's path would
                f"{wanted!r} was a {'symbolic link' if at.kind == 'symlink' else 'file'} at "
                f"position {position}, not the directory {path!r} names.",
                path=wanted,
                position=position,
                detail="not a directory",
            )
        made = _make_target(target)
        out = ReplicaTree(os.fspath(to), fsync=False, replica=False)
        try:
            # A replay killed (-9, the OOM killer) cleans nothing up: until the tree is
            # whole, it says so itself (a reserved name: no journaled path has it).
            marker = target / UNFINISHED_REPLAY
            try:
                marker.write_text(_UNFINISHED_TEXT)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise DiskFullError(path=str(target), detail="nothing was replayed") from e
                raise OutputLocationError(
                    action="replay into", path=str(target), detail=e.strerror or str(e)
                ) from e
            with out.holding_parents():  # a new tree: nothing moves
                files, dirs, links, total = self._write_tree(out, selected, load, progress)
            marker.unlink()
            for name, event in roots.items():  # last: a root's mode may forbid writing into it
                if name and out.lstat(name) is None:  # a root of several, empty then
                    out.create(name, "dir", event.mode, None)
                out.set_root(name, event.mode, event.owner, event.xattrs)
        except BaseException:
            # A half-written tree would pass for the answer (an empty file for one
            # whose bytes could not be read): leave ``to`` as it was found.
            with contextlib.suppress(XoError, OSError):
                for name in os.listdir(target):
                    out.delete(name)
            for directory in made:  # deepest first
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise
        return ReplayResult(position=position, files=files, dirs=dirs, links=links, bytes=total)

    def _selected(
        self, position: int, wanted: str | None
    ) -> tuple[list[LiveFile], Callable[[LiveFile], LiveFile]]:
        """The identities alive at ``position`` at ``wanted`` or under it (None: all of them).

        With the function that gives each one whole. Up to :data:`_FOLD_MAX`
        positions the whole tree comes from one fold of every event, whole
        already. Otherwise the fold of paths gives where each identity is, and
        each is read from its own events when it is written: memory for one
        file's events at a time, not the tree's.
        """
        if wanted is None and position <= _FOLD_MAX:
            return list(self.fold(position).values()), lambda live: live

        def load(shape: LiveFile) -> LiveFile:
            live = self.live(shape.file_id, position)
            if live is None:
                raise FrameError(
                    position=position,
                    detail=f"the path events hold {shape.path!r}, its own events do not",
                )
            live.path = shape.path
            return live

        selected = [
            shape
            for shape in self.paths(position).values()
            if wanted is None or shape.path == wanted or shape.path.startswith(wanted + "/")
        ]
        return selected, load

    def _write_tree(
        self,
        out: ReplicaTree,
        selected: list[LiveFile],
        load: Callable[[LiveFile], LiveFile],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int, int, int]:
        """Write ``selected`` (each given whole by ``load``, one at a time).

        Returns the files, directories and links written, and the bytes of the
        journaled writes folded.
        """
        files = links = total = 0
        ordered = sorted(selected, key=lambda f: (f.path.count("/"), os.fsencode(f.path)))
        directories = {f.file_id: load(f) for f in selected if f.kind == "dir"}
        # Where a default ACL (of the target, or of a directory replayed) could hand
        # one down, every path gets its own set, an empty one too.
        inherit = _DEFAULT_ACL in read_xattrs(out.root) or any(
            live.xattrs and _DEFAULT_ACL in live.xattrs for live in directories.values()
        )
        for done, shape in enumerate(ordered, 1):
            if shape.kind == "dir":
                live = directories[shape.file_id]
                out.create(live.path, "dir", live.mode, None)
            else:
                live = load(shape)
                if live.kind == "symlink":
                    out.create(live.path, "symlink", 0, live.target)
                    out.set_meta(live.path, None, live.mtime_ns, live.owner)  # the link's own
                    links += 1
                elif live.kind == "file":
                    total += self._rebuild(out, live)
                    files += 1
                if live.xattrs or inherit:  # last, as the applier does
                    out.set_xattrs(live.path, live.xattrs or {})
            if progress is not None:
                progress(done, len(ordered))
        # Directory modes and mtimes last: writing inside a directory moves its mtime.
        for live in sorted(directories.values(), key=lambda f: -f.path.count("/")):
            out.set_meta(live.path, live.mode, live.mtime_ns, live.owner)
            if live.xattrs or inherit:
                out.set_xattrs(live.path, live.xattrs or {})
        return files, len(directories), links, total

    def rebuild_file(
        self, file_id: uuid.UUID, position: int, to: str, path: str
    ) -> LiveFile | None:
        """Write one file identity's bytes as at ``position`` at ``path`` under the new ``to``.

        From its own events alone (the stream index), with no fold of the journal's
        paths: for a caller that knows the identity (a synchronizer, from the master
        state). Returns it as it was then; None, with nothing written, if it was
        not a regular file alive then.
        """
        live = self.live(file_id, position)
        if live is None or live.kind != "file":
            return None
        live.path = normalize_relpath(path)
        parent = os.path.dirname(os.path.join(to, live.path))
        os.makedirs(parent, exist_ok=True)
        out = ReplicaTree(to, fsync=False, replica=False)
        with out.holding_parents():
            self._rebuild(out, live)
        return live

    def _rebuild(self, out: ReplicaTree, live: LiveFile) -> int:
        # Each byte of the result comes from the newest write that covers it and was
        # not cut off since: claim writes newest first, read only the blobs that
        # still contribute, write each byte once. A delta that moves old bytes (a
        # shifted copy) applies to the content before it: the file is written up to
        # that delta, which then rebuilds it from its own bytes a chunk at a time
        # (ReplicaTree.rebuild, as the applier does), and so on after it.
        events = [event for _, event in live.content]
        shifted = [i for i, e in enumerate(events) if isinstance(e, ContentReplaced) and _moves(e)]
        # Written in several steps: writable until the last one sets the mode.
        mode = 0o600 if shifted else live.mode
        size = begin = 0
        for stop in [*shifted, len(events)]:
            size = self._overlay(out, live, events[begin:stop], size, mode, fresh=begin == 0)
            if stop < len(events):
                event = events[stop]
                assert isinstance(event, ContentReplaced)
                delta = event_delta(event.ops, self.source.blob)
                # Both digests checked: the bytes it applies to, and what it made.
                base, result = event.base or None, event.result or None
                made = out.rebuild(live.path, *delta, base=base, result=result)
                if made == "diverged":
                    raise FrameError(
                        position=live.content[stop][0],
                        detail=f"its delta does not turn the bytes {live.path!r} held then "
                        "into the content its digests name",
                    )
                size = sum(op[2] for op in event.ops)
            begin = stop + 1
        if shifted:
            out.set_meta(live.path, live.mode, live.mtime_ns, live.owner)
        return sum(event_bytes(event) for event in events)

    def _overlay(
        self,
        out: ReplicaTree,
        live: LiveFile,
        events: list[FileEvent],
        size: int,
        mode: int,
        *,
        fresh: bool,
    ) -> int:
        """Write ``events`` (no shifting delta among them) over the file's ``size`` bytes.

        ``fresh``: the file is written from nothing. Returns the size after them.
        """
        end = limit = _size_after(events, size)
        extents = Extents()
        for event in reversed(events):
            if isinstance(event, BytesWritten):
                limit = min(limit, event.size)
                for offset, length, blob_id in event.ranges:
                    _check_blob_length(live, blob_id, length)
                    extents.claim(offset, blob_id, length, limit)
            elif isinstance(event, FileTruncated):
                limit = min(limit, event.size)
            elif isinstance(event, ContentReplaced):
                limit = min(limit, sum(op[2] for op in event.ops))
                cursor = 0
                for op in event.ops:
                    if op[0] == "data":
                        _check_blob_length(live, op[1], op[2])
                        extents.claim(cursor, op[1], op[2], limit)
                    cursor += op[2]

        def pieces() -> Iterator[tuple[int, bytes | memoryview]]:
            for blob_id, uses in extents.by_blob().items():
                data = memoryview(self.source.blob(blob_id))
                for offset, start, length in uses:
                    yield offset, data[start : start + length]

        if fresh:
            out.write_new(live.path, pieces(), end, mode, live.mtime_ns, live.owner)
        elif events:
            if limit < size:  # bytes cut off since the delta: gone, even if the file grew back
                out.truncate(live.path, limit)
            out.restore_bytes(live.path, pieces(), end, None, None)
        return end

    def contents(
        self,
        file_ids: Collection[uuid.UUID],
        position: int | None = None,
        *,
        scratch: str | None = None,
    ) -> Iterator[tuple[uuid.UUID, bytes | mmap.mmap]]:
        """The content of each wanted file identity alive at ``position``, one at a time.

        Each is replayed into a temporary directory under ``scratch`` (default:
        the system's, which may be memory) and given mapped: the map is valid
        until the next one is asked for.
        """
        if position is None:  # one instant for every identity
            position = self.source.last_position()
        with tempfile.TemporaryDirectory(prefix="xoengine-contents-", dir=scratch) as temporary:
            out = ReplicaTree(temporary, fsync=False, replica=False)
            for file_id in file_ids:
                live = self.live(file_id, position)
                if live is None or live.kind != "file":
                    continue
                name = file_id.hex
                bare = dataclasses.replace(live, path=name, mode=0o600, owner=None, xattrs=None)
                self._rebuild(out, bare)
                with open(os.path.join(temporary, name), "rb") as handle:
                    if os.fstat(handle.fileno()).st_size == 0:
                        yield file_id, b""
                    else:
                        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                            yield file_id, mapped
                out.delete(name)

    # -- history and diff -----------------------------------------------------------------

    def history(self, path: str) -> list[HistoryEntry]:
        """Every change to the file identities that ever had ``path`` (with their renames).

        A file moved by the rename of a directory above it gets an entry of its
        own for that move: operation ``renamed``, its old and new path, and the
        directory's rename in ``moved_with``. So the rename chain is whole, and
        a file that has its path only through such a move has a history.

        A root's own changes (mode, owner, extended attributes: operation
        ``root``) are the history of ``.`` (the one root of a scenario) or of the
        root's name (a root of several).
        """
        end = self.source.last_position()  # every read ends here: one instant, while captures go on
        root_only = _names_root(path)
        target = "" if root_only else normalize_relpath(path)
        roots = [
            (pos, 0, self._root_entry(pos, time_ns, event))
            for pos, time_ns, event in self.source.root_events(self.scenario, end)
            if event.root == target
        ]
        if root_only:
            names = sorted(self.roots(end))
            if not roots and any(names):  # "." names none of several roots
                raise NoFileAtError(
                    f"{path!r} names no root of scenario {self.scenario!r}: it has several, "
                    f"each by its name ({', '.join(map(repr, names))}).",
                    path=path,
                    position=end,
                    detail="a root of several is named by its name",
                )
            return [entry for _, _, entry in roots]
        # The fold of paths: each identity's path after each of its moves (its
        # own renames and those of directories above it), and the moves it had
        # without an event of its own.
        alive: dict[uuid.UUID, LiveFile] = {}
        moves: dict[uuid.UUID, list[tuple[int, str]]] = {}
        carried: dict[uuid.UUID, list[tuple[int, int, str, str, str]]] = {}
        kinds = PATH_EVENTS
        own_paths: dict[uuid.UUID, set[int]] = {}  # each identity's own path events
        for pos, time_ns, event in self.source.file_events(self.scenario, end, kinds=kinds):
            fid = event.originator_id
            own_paths.setdefault(fid, set()).add(pos)
            before = alive[fid].path if fid in alive else event.path
            moved = self._step(alive, pos, event)
            if isinstance(event, FileCreated):
                moves.setdefault(fid, []).append((pos, event.path))
            elif isinstance(event, FileRenamed):
                moves.setdefault(fid, []).append((pos, event.new_path))
                for other, old in moved:
                    now = alive[other].path
                    moves.setdefault(other, []).append((pos, now))
                    via = f"{before} -> {event.new_path}"
                    carried.setdefault(other, []).append((pos, time_ns, old, now, via))
        ids = [fid for fid, paths in moves.items() if any(p == target for _, p in paths)]
        if not ids and not roots:  # a typo must not pass for a path that never changed
            raise NoFileAtError(
                f"No file, directory or link of scenario {self.scenario!r} ever had the "
                f"path {target!r} (journal read up to position {end}).",
                path=target,
                position=end,
                detail="no history",
            )
        entries: list[tuple[int, int, HistoryEntry]] = roots
        for fid in ids:
            timeline = moves[fid]
            starts = [pos for pos, _ in timeline]
            size = 0  # made empty: its content events give every size after
            state: dict[uuid.UUID, LiveFile] = {}  # the identity's own fold, for what moved
            own = list(self.source.file_stream(fid, end))
            # Its path events are among its own (read through another index): one
            # missing is an entry of the stream index lost or damaged.
            missing = own_paths.get(fid, set()) - {pos for pos, _, _ in own}
            if missing:
                raise FrameError(
                    position=min(missing),
                    detail=f"the path events of {target!r} hold this position, its own "
                    "events (the stream index) do not: an entry is lost or damaged "
                    "(xoengine journal verify tells which)",
                )
            for pos, time_ns, event in own:
                # Where it was just before this event: after its last move before it.
                index = bisection.bisect_left(starts, pos) - 1
                at = timeline[index][1] if index >= 0 else event.path
                was = _user_meta(state.get(fid))
                self._step(state, pos, event)
                entry = self._entry(pos, time_ns, fid, event, at, before=size)
                after = _user_meta(state.get(fid))
                pairs = zip(_META_NAMES, was, after, strict=False)  # not the xattrs
                touched = [n for n, a, b in pairs if a != b]
                if isinstance(event, MetadataChanged):
                    entry = dataclasses.replace(entry, changed=touched)
                elif was and not isinstance(event, FileCreated) and "mode" in touched:
                    # A chmod the same pass saw with a write: its stat carries the mode.
                    entry = dataclasses.replace(entry, mode=state[fid].mode, changed=touched)
                entries.append((pos, 0, entry))
                size = _size_after([event], size)
            for n, (pos, time_ns, old, now, via) in enumerate(carried.get(fid, []), 1):
                entries.append((pos, n, self._entry(pos, time_ns, fid, None, old, now, via)))
        entries.sort(key=lambda item: (item[0], item[1]))
        return [entry for _, _, entry in entries]

    def held(self, path: str, position: int) -> HeldSpan:
        """The changes that bound what ``path`` held at ``position`` (see :class:`HeldSpan`).

        For a directory or a link: its creation (or its move there) and its
        deletion (or its move away). A write that changed no byte (the empty
        write that follows the creation of an empty file) bounds nothing.
        :class:`NoFileAtError` if the path held nothing then, or names a root.
        """
        if _names_root(path):
            raise NoFileAtError(path=path, position=position, detail="a root")
        target = normalize_relpath(path)
        current: str | None = None  # the file identity at the path
        since: HistoryEntry | None = None
        until: HistoryEntry | None = None
        sizes: dict[str, int] = {}  # file identity -> its size after the entries so far

        def changes_bytes(entry: HistoryEntry) -> bool:
            before = sizes.get(entry.file_id, 0)
            if entry.size is not None:
                sizes[entry.file_id] = entry.size
            if entry.operation not in CONTENT_CHANGES:
                return False
            if entry.operation == "replaced":  # a delta may move bytes with no literal
                return True
            return entry.size != before or any(length > 0 for _, length in entry.ranges)

        for entry in self.history(target):
            changed = changes_bytes(entry)
            if entry.position > position:
                if entry.file_id == current and (
                    changed
                    or entry.operation == "deleted"
                    or (entry.operation == "renamed" and entry.new_path != target)
                ):
                    until = entry
                    break
                continue
            if entry.operation == "renamed" and entry.new_path == target:
                current, since = entry.file_id, entry  # moved in
            elif entry.file_id == current and entry.operation in {"deleted", "renamed"}:
                current, since = None, None  # gone, or moved away
            elif entry.path == target and entry.operation == "created":
                current, since = entry.file_id, entry
            elif entry.file_id == current and changed:
                since = entry
        if since is None:
            raise NoFileAtError(path=target, position=position, detail="nothing")
        return HeldSpan(position=position, since=since, until=until)

    @staticmethod
    def _entry(
        position: int,
        time_ns: int,
        fid: uuid.UUID,
        event: FileEvent | None,
        at: str,
        new: str | None = None,
        via: str | None = None,
        *,
        before: int | None = None,
    ) -> HistoryEntry:
        """One history entry: ``event`` at path ``at``, or (None) a move to ``new`` ``via`` one.

        ``before``: the file's size before the event (for a truncation's range).
        """
        if isinstance(event, FileRenamed):
            new = event.new_path
        return HistoryEntry(
            position=position,
            time=iso_time(time_ns),
            operation="renamed" if event is None else _operation(event),
            path=at,
            new_path=new,
            ranges=[] if event is None else _ranges(event, before),
            size=_event_size(event),
            moved_with=via,
            file_id=str(fid),
            target=event.target if isinstance(event, FileCreated) else None,
            mode=event.mode if isinstance(event, FileCreated | MetadataChanged) else None,
            owner=None if event is None else observed_owner(event.observed),
            xattrs=(
                {name: value.hex() for name, value in event.xattrs.items()}
                if isinstance(event, XattrsChanged)
                else None
            ),
            mtime=None if event is None else _observed_time(event, 2),
            ctime=None if event is None else _observed_time(event, 3),
        )

    @staticmethod
    def _root_entry(position: int, time_ns: int, event: RootChanged) -> HistoryEntry:
        """One change of a root's own metadata, as a history entry (operation ``root``)."""
        return HistoryEntry(
            position=position,
            time=iso_time(time_ns),
            operation="root",
            path=root_label(event.root),
            new_path=None,
            ranges=[],
            size=None,
            file_id=str(event.originator_id),
            mode=event.mode,
            owner=list(event.owner),
            xattrs={name: value.hex() for name, value in event.xattrs.items()},
        )

    def diff(self, from_position: int, to_position: int) -> DiffResult:
        """What changed between two positions (by file identity: renames are renames).

        A path can be both removed (the file it held) and added or a rename's
        target (the file that took its place), as after ``mv a b`` over ``b``.

        ``from_position`` may be the later one: the result then says what leads
        back from it to ``to_position`` (added: paths that come back; removed:
        paths that go; renamed: new name back to old; modified: the byte ranges
        that differ, named by their path at ``to_position``), which is what a
        rewind between them changes.
        """
        low, high = sorted((from_position, to_position))
        # Up to low only paths matter; after it, what each change touched.
        alive = self.paths(low)
        at_low = {fid: f.path for fid, f in alive.items()}
        touched: dict[uuid.UUID, list[list[int]]] = {}
        meta: set[uuid.UUID] = set()
        sizes: dict[uuid.UUID, int] = {}  # of the files changed since low, after each change
        for pos, _, event in self.source.file_events(self.scenario, high, after=low):
            fid = event.originator_id
            if isinstance(event, PATH_EVENTS):
                self._step(alive, pos, event)
                if isinstance(event, FileCreated):
                    sizes[fid] = 0
            elif isinstance(event, (BytesWritten, FileTruncated, ContentReplaced)):
                if fid not in sizes:  # the size it had at low, for the range its size moved
                    sizes[fid] = self._size_at(fid, low)
                size = sizes.get(fid)
                touched.setdefault(fid, []).extend(_ranges(event, size))
                sizes[fid] = _size_after([event], size or 0)
            else:
                meta.add(event.originator_id)  # MetadataChanged, XattrsChanged
        at_high = {fid: f.path for fid, f in alive.items()}
        start, end = (at_low, at_high) if from_position <= to_position else (at_high, at_low)
        added = sorted(p for fid, p in end.items() if fid not in start)
        removed = sorted(p for fid, p in start.items() if fid not in end)
        renamed = {start[fid]: p for fid, p in end.items() if fid in start and start[fid] != p}
        modified = {
            end[fid]: _merged(r) for fid, r in touched.items() if fid in start and fid in end
        }
        metadata = sorted(
            end[fid]
            for fid in meta
            if fid in start
            and fid in end
            and fid not in touched
            and self._meta_moved(fid, low, high)
        )
        # Roots known at both ends (a journal older than root events knows them later).
        before, after = self.roots(low), self.roots(high)
        roots = sorted(
            root_label(name)
            for name, event in after.items()
            if name in before and _root_meta(before[name]) != _root_meta(event)
        )
        return DiffResult(
            from_position, to_position, added, removed, modified, renamed, metadata, roots
        )

    def _meta_moved(self, fid: uuid.UUID, low: int, high: int) -> bool:
        """Whether what a user sets on ``fid`` differs at ``low`` and ``high``.

        Its metadata events in between may cancel out (a chmod and back), or
        move the ctime alone (a rename): neither is a difference.
        """
        state: dict[uuid.UUID, LiveFile] = {}
        was: tuple[object, ...] | None = None
        for pos, _, event in self.source.file_stream(fid, high):
            if was is None and pos > low:
                was = _user_meta(state.get(fid))
            self._step(state, pos, event)
        if fid not in state:  # alive at high by the path events: its own must say so too
            raise FrameError(
                position=high,
                detail=f"file identity {fid} is alive by its path events, but its own events "
                "(the stream index) hold none of it: an entry is lost or damaged "
                "(xoengine journal verify tells which)",
            )
        return was is not None and was != _user_meta(state.get(fid))

    def _size_at(self, fid: uuid.UUID, position: int) -> int:
        """The size of file identity ``fid`` at ``position`` (0 if it was not alive then).

        From its newest events back to the last that set it: a file written
        many times is not folded whole for it.
        """
        for _, _, event in self.source.file_stream_newest_first(fid, position):
            if isinstance(event, (FileCreated, FileDeleted)):
                return 0  # made empty (its content events give every size after), or gone
            if isinstance(event, (BytesWritten, FileTruncated, ContentReplaced)):
                return _size_after([event], 0)
        return 0

    def roots(self, position: int | None) -> dict[str, RootChanged]:
        """The own metadata of each root (by name) as journaled last at ``position``."""
        return {e.root: e for _, _, e in self.source.root_events(self.scenario, position)}

    # -- last-good search ------------------------------------------------------------------

    def change_positions(self, low: int, high: int) -> list[tuple[int, int, uuid.UUID, str]]:
        """``(position, time label, file id, operation)`` of every change in ``(low, high]``.

        Metadata changes included, a root's own too (operation ``root``, the
        root's stream id): a predicate may look at modes and times.
        """
        changes = [
            (pos, time_ns, event.originator_id, _operation(event))
            for pos, time_ns, event in self.source.file_events(self.scenario, high, after=low)
        ]
        roots = [
            (pos, time_ns, event.originator_id, "root")
            for pos, time_ns, event in self.source.root_events(self.scenario, high, after=low)
        ]
        return sorted(changes + roots, key=lambda change: change[0]) if roots else changes

    def bisect(
        self,
        predicate: Callable[[str], bool],
        path: str | None,
        between: tuple[int, int],
        *,
        burst_threshold: int = 10,
        burst_window: float = BURST_WINDOW_S,
    ) -> BisectResult:
        """Binary-search the last position in ``between`` where ``predicate(replayed)`` holds.

        Without ``path`` the predicate gets a scratch directory holding the
        replay of the whole tree. With ``path`` only that path is replayed, and
        the predicate gets the replayed path itself (a file, or a directory for
        a subtree), which does not exist where ``path`` held nothing then.
        ``between[0]`` must be good; if ``between[1]`` is good too, it is the
        answer. The candidates are the ends of the commits that changed
        something (file events and a root's own): positions of one commit
        share its time label, and a state inside one (a file made but not yet
        written, a swap half done) was never the master's whole, so it is
        never probed. ``first_bad`` is the first bad commit's first change,
        ``last_good`` the position before it. Where the clock
        stood behind (AW0006), commits share one label and are probed as one.

        Also reports the first *burst*, the mark of mass damage such as
        ransomware: at least ``burst_threshold`` files that existed before it
        changed (rewritten, truncated, renamed or deleted) by commits whose time
        labels lie within ``burst_window`` seconds. So one capture pass counts
        as one burst even when it is committed in several transactions (every
        64 MiB or 2000 changes), and so do the many small commits of a watcher.
        The burst is the first window that holds it: the commits within
        ``burst_window`` seconds of the earliest commit from which that many
        files are damaged. Its position is the window's first change to a file
        that was there, never later (a restore to before it undoes all of it);
        its files are those the window damaged (an attack that went on longer
        may have damaged more, which ``diff`` lists). Files created within the
        window do not count, so an initial load or a folder copied in is not a
        burst; neither is a change of mode, times or attributes alone.
        ``burst_window=0``: one commit at a time. A threshold below 1, or a
        window that is negative, not finite or over a year, is a
        :class:`ConfigurationError` before any probe.
        """
        low, high = between
        if low > high:
            raise ConfigurationError(
                detail=f"bisect needs its good bound first: {low} comes after {high}"
            )
        if isinstance(burst_threshold, bool) or not isinstance(burst_threshold, numbers.Integral):
            raise ConfigurationError(detail=f"burst_threshold must be a count: {burst_threshold!r}")
        if burst_threshold < 1:
            raise ConfigurationError(detail=f"burst_threshold must be 1 or more: {burst_threshold}")
        if not (isinstance(burst_window, numbers.Real) and 0 <= burst_window <= _YEAR_S):
            raise ConfigurationError(
                detail=f"burst_window must be 0 to {_YEAR_S} seconds: {burst_window!r}"
            )
        probe = self._decoded_upto(high)
        changes = probe.change_positions(low, high)
        probes: list[tuple[int, bool]] = []

        def good(position: int) -> bool:
            scratch = tempfile.mkdtemp(prefix="xoengine-bisect-")
            tree = os.path.join(scratch, "tree")  # it gets the root's mode: not the one we remove
            try:
                try:
                    probe.replay(tree, position, path)
                except NoFileAtError:  # the path held nothing then: the predicate judges that
                    os.mkdir(tree)
                try:
                    said = predicate(os.path.join(tree, path) if path else tree)
                except Exception as e:  # the caller's own error, told where it came from
                    e.add_note(f"raised by the bisect predicate at position {position}")
                    raise
                if not isinstance(said, bool | np.bool_):  # "no" is truthy: never a verdict
                    raise ConfigurationError(
                        detail=f"the bisect predicate said {said!r} at position {position}: "
                        "it must return True (good) or False (bad)"
                    )
                verdict = bool(said)
            finally:
                with contextlib.suppress(OSError):
                    os.chmod(tree, 0o700)  # a root's mode may forbid removing what is in it
                shutil.rmtree(scratch, ignore_errors=True)
                if os.path.lexists(scratch):  # the predicate made it unremovable: say where
                    warnings.warn(
                        f"bisect left the replay of position {position} at {scratch}: "
                        "the predicate made something there that cannot be removed",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            probes.append((position, verdict))
            return verdict

        if not good(low):
            raise ConfigurationError(
                detail=f"the predicate fails at the lower bound {low}"
                + (" (the empty tree)" if low == 0 else "")
                + ": give a good instant to search from (between=(good, bad); CLI: --good)"
            )
        # Candidates are commit ends: a commit's positions share its time label, and
        # one inside it (a file made, not yet written; a swap half done) is a state
        # the master never held whole, which would make a predicate flip back.
        commits: dict[int, list[int]] = {}  # label -> [its first change here, its last]
        for pos, time_ns, _, _ in changes:
            commits.setdefault(time_ns, [pos, pos])[1] = pos
        begins = {last: first for first, last in commits.values()}  # commit end -> start
        candidates = sorted(begins)
        first_bad: int | None = None
        if high == low or good(high):  # low was probed good just now
            last_good = high
        else:
            # Invariant: the state after candidates[lo-1] (or low) is good, after
            # candidates[hi] bad.
            lo, hi = 0, len(candidates) - 1
            while lo < hi:
                mid = (lo + hi) // 2
                if good(candidates[mid]):
                    lo = mid + 1
                else:
                    hi = mid
            end = candidates[lo] if candidates else high
            first_bad = max(begins.get(end, end), low + 1)  # the bad commit's first change
            last_good = first_bad - 1
        burst_position, burst_files = self._burst(
            changes, burst_threshold, round(burst_window * 1e9)
        )
        return BisectResult(last_good, first_bad, probes, burst_position, burst_files)

    def _decoded_upto(self, high: int) -> Forensics:
        """These forensics over the file events up to ``high`` decoded once (self if too many)."""
        events = list(
            itertools.islice(self.source.file_events(self.scenario, high), _DECODED_MAX + 1)
        )
        if len(events) > _DECODED_MAX:
            return self
        return Forensics(_Decoded(self.source, self.scenario, high, events), self.scenario)

    @staticmethod
    def _burst(
        changes: list[tuple[int, int, uuid.UUID, str]], threshold: int, window_ns: int
    ) -> tuple[int | None, int]:
        # Commits (time labels) in order; a window of them, from each commit on,
        # slides over the history. A file a commit in the window creates is new,
        # not damaged, and a change of mode, mtime or attributes alone is not
        # damage either.
        commits: dict[int, tuple[int, list[tuple[uuid.UUID, bool]]]] = {}
        for pos, time_ns, fid, operation in changes:
            if operation not in {"metadata", "xattrs", "root"}:
                commits.setdefault(time_ns, (pos, []))[1].append((fid, operation == "created"))
        labels = sorted(commits)
        counts: dict[tuple[uuid.UUID, bool], int] = {}  # (file, created?) -> events in window
        damaged = 0

        def hurt(fid: uuid.UUID) -> bool:
            return counts.get((fid, False), 0) > 0 and counts.get((fid, True), 0) == 0

        def shift(label: int, step: int) -> None:
            nonlocal damaged
            for fid, created in commits[label][1]:
                was = hurt(fid)
                counts[fid, created] = counts.get((fid, created), 0) + step
                damaged += hurt(fid) - was

        end = 0  # the window: commits labels[start:end], within window_ns of the first
        for start, label in enumerate(labels):
            while end < len(labels) and labels[end] - label <= window_ns:
                shift(labels[end], 1)
                end += 1
            if damaged and damaged >= threshold:
                # The burst: the whole window, from its first commit that changed a
                # file that was there (one that only made and wrote new files is no damage).
                # Never a later start: a restore to before the burst must undo all of it.
                first = start
                while not any(not made and hurt(fid) for fid, made in commits[labels[first]][1]):
                    first += 1  # it changed only files the window made
                return commits[labels[first]][0], damaged
            shift(label, -1)
        return None, 0
