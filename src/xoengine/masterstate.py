"""The master state: the fold of file events into a manifest, and the racy rule.

Room: master state, between producers and storage. May import ``codec``, ``walk``,
``blocks``, ``events``, ``manifest`` (and numpy for the packed digests).

:class:`MasterState` runs inside the append transaction (the journal's
``inline`` hook), so the master state is exactly as current as the journal,
and it can be dropped and rebuilt from the journal alone. :func:`racy` says
which recorded stats cannot vouch for a file (docs/design.md, "Change
detection and racy files").
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from xoengine import codec
from xoengine.blocks import BlockMap
from xoengine.events import (
    BytesWritten,
    ContentReplaced,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileRenamed,
    FileTruncated,
    MetadataChanged,
    XattrsChanged,
    observed_owner,
)
from xoengine.manifest import DIGEST_WIDTH, FileState, Manifest
from xoengine.walk import CAPABILITY

if TYPE_CHECKING:
    import uuid

    from xoengine.datastore import ReadTxn, WriteTxn

__all__ = [
    "RACY_NS_PER_BYTE",
    "RACY_WINDOW_NS",
    "RACY_WINDOW_WHOLE_SECONDS_NS",
    "RACY_WRITE_MAX_NS",
    "MasterState",
    "capability_dropped",
    "holds_capability",
    "pack_digests",
    "racy",
    "racy_window",
    "strong_digests",
    "unpack_map",
    "without_holes",
    "xattr_digest",
    "xattrs_racy",
    "zero_digests",
]

_PACKED = np.dtype([("strong", "<u8"), ("weak", "<u4")])


# -- block digests in the manifest ------------------------------------------------------


def pack_digests(block_map: BlockMap, first: int = 0, last: int | None = None) -> bytes:
    """Blocks ``first..last-1`` of ``block_map`` in the manifest's 12-byte layout."""
    count = block_map.block_count
    last = count if last is None else min(last, count)
    packed = np.empty(max(last - first, 0), dtype=_PACKED)
    packed["strong"] = block_map.digest_array()[first:last]
    packed["weak"] = block_map.weak_array()[first:last]
    return packed.tobytes()


@functools.lru_cache(maxsize=16)
def zero_digests(length: int) -> bytes:
    """The packed digest (manifest layout) of one block of ``length`` zeros."""
    return pack_digests(BlockMap.compute(bytes(length), max(length, 1)))


def without_holes(first: int, packed: bytes, hole: bytes, keep: int = 0) -> list[list[Any]]:
    """``[first block, packed]`` spans of ``packed`` but its blocks of zeros from ``keep`` on.

    ``packed``: digests of blocks from ``first``; ``hole``: a zero block's
    (:attr:`MasterState.hole`). Where no digest is stored a block is zeros, so
    blocks past any the master state holds need none (a file grown by a hole).
    """
    rows = np.frombuffer(packed, dtype=_PACKED)
    zero = np.frombuffer(hole, dtype=_PACKED)[0]
    kept = (rows["strong"] != zero["strong"]) | (rows["weak"] != zero["weak"])
    kept[: max(0, keep - first)] = True
    edges = np.flatnonzero(np.diff(kept.astype(np.int8), prepend=0, append=0)).tolist()
    width = DIGEST_WIDTH
    return [
        [first + a, packed[a * width : b * width]]
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


def strong_digests(packed: bytes) -> npt.NDArray[np.uint64]:
    """The strong (xxh3-64) digests of manifest-layout ``packed`` digests, as an array."""
    return np.frombuffer(packed, dtype=_PACKED)["strong"].astype(np.uint64)


def unpack_map(packed: bytes, size: int, block_size: int) -> BlockMap:
    """A :class:`BlockMap` for ``size`` bytes from manifest digests (file digest unknown)."""
    records = np.frombuffer(packed, dtype=_PACKED)
    return BlockMap(
        block_size=block_size,
        size=size,
        digests=records["strong"].astype("<u8").tobytes(),
        weak=records["weak"].astype("<u4").tobytes(),
        file_digest=bytes(16),
    )


RACY_WINDOW_NS: Final = 20_000_000
"""How close to its stat's timestamps a file may be seen and still be racy (ns).

A filesystem stamps files with a coarse clock: a jiffy (up to 10 ms) on Linux
before multigrain timestamps (6.13), a whole second on ext4 with 128-byte
inodes or on many NFS servers, two seconds on FAT. A file whose stat was taken
within one tick of its mtime or ctime may be rewritten, same size, in that very
tick: its stat then shows nothing. Such a file is *racy* (git's term) and the
capture reads it again while its stat stays the same (see ``Capture._racy``).
"""
RACY_WINDOW_WHOLE_SECONDS_NS: Final = 2_000_000_000
"""The window for timestamps that are whole seconds (filesystems without sub-second time)."""


RACY_NS_PER_BYTE: Final = 4
"""How long a write may take per byte (250 MB/s), added to a file's racy window (ns).

A write stamps the mtime as it begins, and its bytes land until it ends: a
capture that read a file while one long write was in flight (a database's
or ``dd``'s 128 MiB ``pwrite``) saw some old bytes and some new, under the
stat the write leaves. The window grows with the file's size by the time
writing all of it may take, so such a file is read again once that time has
passed (review 23 E, F8), up to :data:`RACY_WRITE_MAX_NS`."""
RACY_WRITE_MAX_NS: Final = 1_000_000_000
"""The most a file's size adds to its racy window: a file is read again at each pass
within its window, and a 20 GiB image must not be read whole for 80 s after a write."""


def racy_window(state: FileState) -> int:
    """The window within which a stat taken after a timestamp leaves the file racy (ns)."""
    whole = state.mtime_ns % 1_000_000_000 == 0 and state.ctime_ns % 1_000_000_000 == 0
    tick = RACY_WINDOW_WHOLE_SECONDS_NS if whole else RACY_WINDOW_NS
    return tick + min(max(state.size, 0) * RACY_NS_PER_BYTE, RACY_WRITE_MAX_NS)


def _too_soon(state: FileState) -> bool:
    """Whether ``state``'s stat was taken within the racy window of its timestamps."""
    return state.observed_ns - max(state.mtime_ns, state.ctime_ns) < racy_window(state)


def racy(state: FileState) -> bool:
    """Whether ``state``'s stat was taken too soon after its timestamps to vouch for it."""
    if state.kind != "file" or not state.size or not state.observed_ns:
        return False
    return _too_soon(state)


def xattrs_racy(state: FileState) -> bool:
    """Whether ``state``'s stat cannot vouch for the path's extended attributes.

    Setting one moves the ctime alone, on any kind of path and size, so this
    is :func:`racy` for every path; and a stat whose time is unknown (events
    of journals written before it was recorded) never vouches.
    """
    return not state.observed_ns or _too_soon(state)


def xattr_digest(xattrs: dict[str, bytes]) -> int:
    """What the master state keeps of a set of extended attributes: 0 for none.

    Odd where the set holds a file capability (:func:`holds_capability`).
    """
    if not xattrs:
        return 0
    digest = codec.digest64(codec.pack(sorted(xattrs.items()))) & ~1
    return (digest | (CAPABILITY in xattrs)) or 2


def holds_capability(digest: int) -> bool:
    """Whether the set of :func:`xattr_digest` ``digest`` holds a file capability."""
    return digest > 0 and bool(digest & 1)


def capability_dropped(state: FileState, event: FileEvent) -> bool:
    """Whether ``event`` made the kernel drop the file capability ``state`` says the path has.

    A write, a truncation or a chown does. The set is then unknown (-1): the
    next capture journals it whole, even if the capability was given again
    meanwhile, since the replica's copy of the change drops it too.
    """
    if not holds_capability(state.xattrs):
        return False
    if isinstance(event, (BytesWritten, FileTruncated, ContentReplaced)):
        return True
    owner = observed_owner(event.observed)
    return owner is not None and (owner[0], owner[1]) != (state.uid, state.gid)


# -- the fold ----------------------------------------------------------------------------


class MasterState:
    """The master-state projection of one scenario: a fold of its file events into a manifest."""

    def __init__(self, scenario: str, manifest: Manifest, block_size: int) -> None:
        """Fold ``scenario``'s events into ``manifest``."""
        self.scenario = scenario
        self.manifest = manifest
        self.block_size = block_size
        self.hole = zero_digests(block_size)
        """The packed digest of a block of zeros: what the manifest holds for one it has not."""

    def fold(self, txn: WriteTxn, event: FileEvent, derived: bytes | None = None) -> None:
        """Apply one file event to the manifest (inside the append transaction).

        A :class:`ContentReplaced` carries no block digests (the new map of a
        shifted content is as large as the content is long, while the delta
        may be a few bytes): its producer, which read the new content, hands
        the packed map in as ``derived``. Without it (a rebuild from the journal
        alone) the file is marked *underived*: its map is derived later from
        the content the journal holds (``Scenario.rebuild_master_state``), and
        until then a capture of that file journals its whole content.
        """
        manifest = self.manifest
        if isinstance(event, FileRenamed):
            self._rename(txn, event.path, event.new_path, event.originator_version)
            return
        if isinstance(event, FileDeleted):
            old = manifest.get(txn, event.path)
            manifest.remove(txn, event.path)
            if old is not None:
                manifest.cut_digests(txn, old.file_id, 0)
                manifest.mark_underived(txn, old.file_id, underived=False)
            return
        if isinstance(event, FileCreated):
            state = FileState(
                file_id=event.originator_id,
                version=event.originator_version,
                kind=event.kind,
                mode=event.mode,
                mtime_ns=event.mtime_ns,
                target=event.target,
                size=len(os.fsencode(event.target)) if event.target is not None else 0,
                # Made with none (an XattrsChanged follows if it has some), or not known.
                xattrs=0 if event.xattrs_recorded else -1,
            )
        else:
            current = manifest.get(txn, event.path)
            if current is None:  # a stream the master state never saw: ignore, never invent
                return
            state = current.evolve(version=event.originator_version)
            if isinstance(event, MetadataChanged):
                state = state.evolve(mode=event.mode, mtime_ns=event.mtime_ns)
            elif isinstance(event, XattrsChanged):
                state = state.evolve(xattrs=xattr_digest(event.xattrs))
            elif isinstance(event, (BytesWritten, FileTruncated, ContentReplaced)):
                state = state.evolve(size=event.size)
                nblocks = -(-event.size // self.block_size)
                spans = event.digests
                if isinstance(event, ContentReplaced) and not spans:
                    manifest.cut_digests(txn, state.file_id, 0)
                    manifest.mark_underived(txn, state.file_id, underived=derived is None)
                    spans = [[0, derived]] if derived is not None else []
                for first, packed in spans:
                    manifest.set_digests(txn, state.file_id, first, packed, None, fill=self.hole)
                manifest.cut_digests(txn, state.file_id, nblocks)
        if capability_dropped(state, event):
            state = state.evolve(xattrs=-1)
        if event.observed:
            size, mode, mtime_ns, ctime_ns, ino, dev, *when = event.observed
            state = state.evolve(
                size=size,
                mode=mode,
                mtime_ns=mtime_ns,
                ctime_ns=ctime_ns,
                ino=ino,
                dev=dev,
                observed_ns=when[0] if when else 0,
            )
            owner = observed_owner(event.observed)  # in events since it was recorded
            if owner is not None:
                state = state.evolve(uid=owner[0], gid=owner[1])
        manifest.put(txn, event.path, state)

    def _rename(self, txn: WriteTxn, old: str, new: str, version: int) -> None:
        manifest = self.manifest
        moving = [(old, manifest.get(txn, old))]
        moving += list(manifest.items(txn, old + "/"))
        for path, state in moving:
            if state is None:
                continue
            manifest.remove(txn, path)
            moved = new + path[len(old) :]
            manifest.put(txn, moved, state.evolve(version=version) if path == old else state)

    def derive(self, txn: WriteTxn, file_id: uuid.UUID, block_map: BlockMap) -> None:
        """Store the map derived for an underived file (from its content in the journal)."""
        self.manifest.cut_digests(txn, file_id, 0)
        self.manifest.set_digests(txn, file_id, 0, pack_digests(block_map), None, fill=self.hole)
        self.manifest.mark_underived(txn, file_id, underived=False)

    def block_map(self, txn: ReadTxn, state: FileState) -> BlockMap | None:
        """The block map the master state holds for a file (None: underived, not known)."""
        if self.manifest.is_underived(txn, state.file_id):
            return None
        return unpack_map(self.digests(txn, state), state.size, self.block_size)

    def digests(
        self, txn: ReadTxn, state: FileState, first: int = 0, last: int | None = None
    ) -> bytes:
        """The packed digests of ``state``'s blocks ``first .. last-1`` (holes' included)."""
        nblocks = -(-state.size // self.block_size)
        last = nblocks if last is None else min(last, nblocks)
        packed = self.manifest.digests(txn, state.file_id, last, fill=self.hole, first=first)
        tail = state.size % self.block_size
        if tail and last == nblocks > first and packed[-DIGEST_WIDTH:] == self.hole:
            # None stored for a short last block: it is zeros, but short ones.
            packed = packed[:-DIGEST_WIDTH] + zero_digests(tail)
        return packed
