"""Rewind: play a replica's undo log backwards, and the retention policy for that log (R5, R6).

Room: producers and projections. May import ``errors``, ``codec``, ``datastore``,
``journal``, ``tree`` (never replica, capture or sync: the engine wires them).

A replica at applied position A is rewound to P < A by undoing, newest
first, every before-image recorded for positions in (P, A]. The records are
cut into *runs* of in-place changes (bytes written, truncations, metadata,
whole contents rebuilt with in-place copies only) separated by *structural*
records (creations, deletions, renames, contents with shifted copies). A run
is undone per path at once: each byte gets its oldest before-image in the
run, the file its oldest size, mode and mtime, in one open; structural
records are undone one at a time. After records are undone, the applied
position moves below the oldest of them and they are dropped, in one
transaction: a rewind killed midway resumes from where it stopped. Redoing
is exact: a run's plan is computed from its records alone, never from the
replica's content, and every other undo is idempotent (a "content" record
carries the digests of both contents).
Going forward (P > A) is the applier's job: it applies the journal up to P.

:func:`retention` is a pure policy: given the undo log's sizes and ages, the
rewind points and the configured limits, it says up to which position the
log may be trimmed and why, and whether operators must be warned that the
budget is about to cut the protected window. :class:`RetentionClock` is the
clock it measures ages with: a wall clock stepped forward does not age history.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

from xoengine.errors import (
    ConfigurationError,
    ParentNotDirectoryError,
    ReplicaDivergedError,
    SymlinkedParentError,
)
from xoengine.tree import Extents, event_delta, undo_blob_size
from xoengine.walk import path_and_parents

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from xoengine.datastore import Store, WriteTxn
    from xoengine.tree import Owner, Piece, ReplicaTree, UndoLog, UndoRecord
    from xoengine.walk import Xattrs

__all__ = [
    "CLEAR_SHARE",
    "RetentionClock",
    "RetentionDecision",
    "RetentionPolicy",
    "RewindPoint",
    "UndoUsage",
    "retention",
    "rewind_back",
    "undo_one",
    "undo_path",
]

_ALERT_SHARE: Final = 0.8
CLEAR_SHARE: Final = 0.7
"""Under this share of the budget, a standing AW0002 is cleared (see RetentionDecision)."""
_RELATIVE: Final = frozenset({"renamed", "content"})
_IN_PLACE: Final = frozenset({"bytes", "meta", "xattrs"})
HOLE: Final = b""
"""The blob id a plan gives to the zeros of a hole a cut took (``holes`` of a ``bytes`` record)."""
_NO_BYTES: Final = frozenset({"meta", "xattrs"})
_BATCH_POSITIONS: Final = 256
_BATCH_BYTES: Final = 1 << 20


@dataclass(frozen=True)
class RewindPoint:
    """A bookmark: name, journal position, time label (UTC ns) and kind."""

    name: str
    position: int
    time_ns: int
    kind: str = "user"


# -- playing the undo log backwards ----------------------------------------------------------


def undo_one(
    tree: ReplicaTree,
    record: UndoRecord,
    blob: Callable[[bytes], bytes | memoryview],
    strict: bool = False,
) -> None:
    """Undo one change on ``tree`` (idempotent: running it twice leaves the same tree).

    ``strict``: nothing undone before it was redone (see :func:`rewind_back`), so
    in-place bytes to put back into a file that is not there mean the replica
    was changed outside xoengine: :class:`ReplicaDivergedError`.
    """
    args = record.args
    path = record.path
    op = record.op
    if op == "created":
        try:
            tree.delete(path)
        except (SymlinkedParentError, ParentNotDirectoryError):
            # Under a link or a file: redone after an older record's undo put that
            # back (a killed rewind), the path is gone already. Else, changed outside.
            if strict:
                raise
        return
    if op == "root":  # a root's own metadata (``path``: its name, "" for the one root)
        if args:
            tree.set_root(path, args["mode"], args.get("owner"), args.get("xattrs", {}))
        return
    if op in {"deleted", "replaced"}:
        _restore(tree, path, args, blob)
    elif op == "renamed":
        new = args["new_path"]
        # Undone already if the old path is back (a resumed rewind): moving again
        # would put what an older record of this position restored at new_path over it.
        moved, back = tree.lstat(new) is not None, tree.lstat(path) is not None
        if moved and not back:
            tree.rename(new, path)
        elif strict and moved == back:
            # Something else took the old name, or the renamed entry is gone: never
            # leave both (or neither) and report the point's tree.
            raise ReplicaDivergedError(path=path, position=record.position, replica=tree.root)
    elif op == "bytes":
        pieces: list[tuple[int, Piece]] = [
            (offset, blob(args[name])) for offset, name in args.get("spans", [])
        ]
        pieces += [(offset, length) for offset, length in args.get("holes", ())]
        restored = tree.restore_bytes(
            path,
            pieces,
            args["old_size"],
            args.get("mode"),
            args.get("mtime_ns"),
            args.get("owner"),
            args.get("xattrs"),
        )
        if strict and not restored:
            raise ReplicaDivergedError(path=path, position=record.position, replica=tree.root)
        return  # bytes, size, mode, mtime, owner and extended attributes in one open
    elif op == "content":
        _undo_delta(tree, record, blob)
    elif strict and tree.lstat(path) is None:  # a mode or time to put back on nothing
        raise ReplicaDivergedError(path=path, position=record.position, replica=tree.root)
    if ("mode" in args or "mtime_ns" in args) and tree.lstat(path) is not None:
        tree.set_meta(path, args.get("mode"), args.get("mtime_ns"), args.get("owner"))
    if "xattrs" in args:  # last: writes and chowns drop capabilities
        tree.set_xattrs(path, args["xattrs"])


def _restore(
    tree: ReplicaTree, path: str, args: dict[str, Any], blob: Callable[[bytes], bytes | memoryview]
) -> None:
    """Put back what a deletion or replacement removed: a directory, link or file."""
    kind = args.get("kind", "file")
    if kind == "dir":
        tree.create(path, "dir", args.get("mode", 0o755), None)
    elif kind == "symlink":
        if _kind(tree, path) not in {None, "symlink"}:
            tree.delete(path)
        tree.create(path, "symlink", 0, args.get("target"))
    else:
        if _kind(tree, path) not in {None, "file"}:
            tree.delete(path)
        names = args.get("chunks", ["content"] if "content" in args else [])
        # A count is that many zeros: a thin image's holes are no blob.
        chunks = (name if isinstance(name, int) else blob(args[name]) for name in names)
        tree.replace(path, chunks, mode=args.get("mode"), owner=args.get("owner"))


def _undo_delta(
    tree: ReplicaTree, record: UndoRecord, blob: Callable[[bytes], bytes | memoryview]
) -> None:
    """Rebuild the old content from the new one and the saved bytes (digests make it idempotent)."""
    args = record.args
    outcome = tree.rebuild(
        record.path,
        *event_delta(args["ops"], lambda name: blob(args[name])),  # data: an arg's name
        base=args.get("new_digest"),
        result=args.get("old_digest"),
        mode=args.get("mode"),
        owner=args.get("owner"),
    )
    if outcome == "diverged":
        raise ReplicaDivergedError(path=record.path, position=record.position, replica=tree.root)


# -- runs of in-place changes, undone per path ------------------------------------------------


@dataclass
class PathPlan:
    """What undoing a run of in-place records does to one path.

    ``extents``: the oldest before-image of each byte; ``size``: the oldest
    size (None: only metadata changed); ``mode``/``mtime_ns``/``owner``/``xattrs``:
    the oldest ones recorded; ``records``: how many records of the run it stands for.
    """

    path: str
    extents: Extents = field(default_factory=Extents)
    size: int | None = None
    mode: int | None = None
    mtime_ns: int | None = None
    owner: Owner | None = None
    xattrs: Xattrs | None = None
    records: int = 0
    position: int = 0
    """The newest position of the run that changed the path."""


def _coalescable(record: UndoRecord) -> bool:
    if record.op in _IN_PLACE:
        return True
    if record.op != "content":
        return False
    cursor = 0
    for op in record.args["ops"]:  # in place: every copy takes old bytes from where they were
        if op[0] == "copy" and op[1] != cursor:
            return False
        cursor += op[2]
    return True


def _spans(record: UndoRecord) -> Iterator[tuple[int, bytes, int]]:
    """``(offset, blob id, length)`` of the before-images of an in-place record."""
    args = record.args
    if record.op == "bytes":
        for offset, name in args.get("spans", []):
            yield offset, args[name], undo_blob_size(args[name])
    elif record.op == "content":
        cursor = 0
        for op in args["ops"]:
            if op[0] == "data":
                yield cursor, args[op[1]], op[2]
            cursor += op[2]


def plan_run(records: Sequence[UndoRecord]) -> list[PathPlan]:
    """Per path, what undoing ``records`` (in-place ones, newest first) amounts to.

    A byte no record of the run saved was not changed by the run (or did not
    exist before it, and the oldest size cuts it off): it is left as it is.
    """
    plans: dict[str, PathPlan] = {}
    for record in reversed(records):  # oldest first: the first claim of a byte wins
        plan = plans.get(record.path)
        if plan is None:
            plan = plans[record.path] = PathPlan(record.path, position=record.position)
        plan.records += 1
        args = record.args
        if plan.mode is None:
            plan.mode = args.get("mode")
        if plan.mtime_ns is None:
            plan.mtime_ns = args.get("mtime_ns")
        if plan.owner is None:
            plan.owner = args.get("owner")
        if plan.xattrs is None:
            plan.xattrs = args.get("xattrs")
        if record.op in _NO_BYTES:
            continue
        if plan.size is None:
            plan.size = args["old_size"]
        for offset, blob_id, length in _spans(record):
            plan.extents.claim(offset, blob_id, length, plan.size)
        for offset, length in args.get("holes", ()):  # zeros, no blob
            plan.extents.claim(offset, HOLE, length, plan.size)
    return list(plans.values())


def undo_path(
    tree: ReplicaTree,
    plan: PathPlan,
    blob: Callable[[bytes], bytes | memoryview],
    strict: bool = False,
) -> None:
    """Apply one path's plan: each contributing blob read once, the file opened once.

    ``strict`` as for :func:`undo_one`.
    """
    if plan.size is not None:

        def pieces() -> Iterator[tuple[int, memoryview | int]]:
            for blob_id, uses in plan.extents.by_blob().items():
                if blob_id == HOLE:
                    yield from ((offset, length) for offset, _, length in uses)
                    continue
                data = memoryview(blob(blob_id))
                for offset, start, length in uses:
                    yield offset, data[start : start + length]

        restored = tree.restore_bytes(
            plan.path, pieces(), plan.size, plan.mode, plan.mtime_ns, plan.owner, plan.xattrs
        )  # extended attributes last in it: writes and chowns drop capabilities
        if strict and not restored:
            raise ReplicaDivergedError(path=plan.path, position=plan.position, replica=tree.root)
        return
    if strict and tree.lstat(plan.path) is None:  # a mode or time to put back on nothing
        raise ReplicaDivergedError(path=plan.path, position=plan.position, replica=tree.root)
    if (plan.mode is not None or plan.mtime_ns is not None) and tree.lstat(plan.path) is not None:
        tree.set_meta(plan.path, plan.mode, plan.mtime_ns, plan.owner)
    if plan.xattrs is not None:  # last: a chown drops file capabilities
        tree.set_xattrs(plan.path, plan.xattrs)


def _kind(tree: ReplicaTree, path: str) -> str | None:
    st = tree.lstat(path)
    if st is None:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "file"


def rewind_back(
    store: Store,
    tree: ReplicaTree,
    undo: UndoLog,
    applied: int,
    target: int,
    set_applied: Callable[[WriteTxn, int], None],
    progress: Callable[[int, int], None] | None = None,
    *,
    leftovers: bool = False,
) -> int:
    """Undo every change in ``(target, applied]``, newest first; return records undone.

    ``progress(done, total)`` follows each commit (records undone, records to undo).

    The log notes that a rewind runs until it is done. A file its in-place
    records put bytes back into must be there, unless this run may redo what
    one that did not finish did (an older record's undo may have removed it):
    in the first commit's worth of records after such a run, and throughout
    with ``leftovers`` (what a killed apply or synchronization left: its
    changes may or may not have been made). Elsewhere a missing file means the
    replica was changed outside xoengine: :class:`ReplicaDivergedError`,
    never a silently incomplete rewind.

    Positions whose records are all in-place changes form runs, undone per
    path (:func:`plan_run`, :func:`undo_path`); the others are undone record
    by record (:func:`undo_one`). After undoing, the applied position drops
    below the oldest position undone and its records are deleted, in one
    transaction, and only then: a rewind resumed after a crash redoes a run
    from its records (the same plan, or one including older records, which
    overrides it), or absolute overwrites. A rename or a delta that depends on
    the state it finds gets commits of its own, before and after.
    """
    records = undo.records(after=target, upto=applied, reverse=True)

    def done(txn: WriteTxn) -> None:
        set_applied(txn, target)
        undo.set_undoing(txn, value=False)

    if not records:
        store.write(done)
        return 0
    with store.read() as txn:
        unfinished = undo.undoing(txn)
    strict = not (leftovers or unfinished)
    if not unfinished:  # noted before the first change (set already: a run to redo)
        store.write(lambda txn: undo.set_undoing(txn, value=True))
    # What undoing a record of this run removes: a file that is not there is
    # redone work only if one of them (or its parent's) took it away.
    removed = {r.path for r in records if r.op == "created"}
    removed |= {r.args["new_path"] for r in records if r.op == "renamed"}

    def missing(path: str) -> bool:
        """Whether a missing ``path`` means the replica was changed outside xoengine."""
        if strict:
            return True
        return not any(p in removed for p in path_and_parents(path))

    by_position: dict[int, list[UndoRecord]] = {}
    for record in records:
        by_position.setdefault(record.position, []).append(record)
    count = 0
    batch: list[int] = []  # undone, not committed yet (newest first)
    batch_bytes = 0
    run: list[UndoRecord] = []  # in-place records not undone yet (newest first)
    run_positions: list[int] = []

    def commit(positions: list[int]) -> None:
        def work(txn: WriteTxn) -> None:
            for position in positions:
                undo.drop(txn, position)
            set_applied(txn, positions[-1] - 1)

        store.write(work)

    def flush() -> None:
        nonlocal batch, batch_bytes, run, run_positions, strict
        # A run moves no directory and each plan has a path of its own: all written
        # (a tree that fsyncs: from several threads) before the commit drops the records.
        tree.for_each(
            lambda plan: undo_path(tree, plan, undo.view, missing(plan.path)), plan_run(run)
        )
        positions = batch + run_positions
        if positions:
            commit(positions)
            strict = not leftovers  # what follows was never started before
            if progress is not None:
                progress(count, len(records))
        batch, batch_bytes, run, run_positions = [], 0, [], []

    for position in sorted(by_position, reverse=True):
        group = by_position[position]
        if all(_coalescable(r) for r in group):
            run.extend(group)  # already newest seq first
            run_positions.append(position)
            count += len(group)
            continue
        # Records that overwrite absolutely (creations, deletions) can share one
        # commit with a run: redoing it all newest first after a crash ends with
        # each path in its oldest before-image again. A rename or a digest-checked
        # delta depends on the state it finds (its redo may skip): it gets a commit
        # of its own, before and after, so no redo crosses it.
        relative = any(r.op in _RELATIVE for r in group)
        if relative or run:
            flush()
        for record in group:  # already newest seq first
            undo_one(tree, record, undo.view, missing(record.path))
            count += 1
        batch.append(position)
        batch_bytes += sum(len(str(r.args)) for r in group)
        if relative or len(batch) >= _BATCH_POSITIONS or batch_bytes >= _BATCH_BYTES:
            flush()
    flush()
    store.write(done)
    return count


# -- retention ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPolicy:
    """Limits on one replica's undo log.

    ``max_age_s``: before-images older than this may go; ``max_bytes``: total
    budget; ``min_points``: rewind points that must stay reachable whatever the
    budget says; ``window_s``: the history that must stay rewindable (the
    budget never trims inside it; if it would have to, an alert is raised).
    """

    max_age_s: float | None = None
    max_bytes: int | None = None
    min_points: int = 1
    window_s: float | None = None

    def __post_init__(self) -> None:
        """Refuse what no budget means: a negative or non-numeric limit, a fractional count."""
        limits = {"max_age_s": self.max_age_s, "window_s": self.window_s}
        for name, value in limits.items():
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value < math.inf  # NaN too: it compares false
            ):
                raise ConfigurationError(
                    detail=f"{name} is a finite number >= 0 or None, not {value!r}"
                )
        for name, count in {"max_bytes": self.max_bytes, "min_points": self.min_points}.items():
            if (count is not None or name == "min_points") and (
                isinstance(count, bool) or not isinstance(count, int) or count < 0
            ):
                raise ConfigurationError(detail=f"{name} is an int >= 0, not {count!r}")


class RetentionClock:
    """The time age retention measures at: the wall clock, as far as elapsed time vouches for it.

    A wall clock stepped forward (a bad NTP source, a date set by hand) would
    make every before-image look old at once, and ``max_age_s`` would trim
    history down to ``min_points``. This clock never goes ahead of its last
    reading by more than the time that has passed since on ``CLOCK_BOOTTIME``
    (which runs at the wall clock's rate, NTP's slewing included, but which no
    step moves). Forward steps of up to :attr:`SLACK_NS` in all pass unseen
    (a boot's first NTP correction); beyond that, :meth:`read` gives the
    elapsed-time bound and how far the wall clock is ahead of it. A clock that
    goes back is taken as it reads (ages shrink: nothing is cut sooner).

    ``path``: a file where each reading is kept (one per journal, beside it), so
    that the next engine of the same boot goes on from it: a step made while no
    engine was open is seen too. Across a reboot, or without the file, the
    first reading is taken as the clock says. The file is a hint, not history:
    it is written without sync, and a failure to write it is not an error.
    """

    SLACK_NS: ClassVar[int] = 60 * 10**9

    def __init__(self, path: Path | None = None) -> None:
        """Take the first reading (or the saved one of this boot): steps from then on are seen."""
        self._lock = threading.Lock()
        self._path = path
        self._boot_id = _boot_id()
        self._anchor = self._saved() or self._clocks()

    @staticmethod
    def _clocks() -> tuple[int, int]:
        return time.time_ns(), time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def _saved(self) -> tuple[int, int] | None:
        """The last reading saved in ``path``, if it was taken since this boot."""
        if self._path is None or not self._boot_id:
            return None
        try:
            boot_id, wall, boot = self._path.read_text().split()
            saved = (int(wall), int(boot))
        except (OSError, ValueError):
            return None
        if boot_id != self._boot_id or saved[1] > self._clocks()[1]:
            return None
        return saved

    def _save(self) -> None:
        if self._path is None or not self._boot_id:
            return
        wall, boot = self._anchor
        spare = self._path.with_name(self._path.name + ".new")
        with contextlib.suppress(OSError):
            spare.write_text(f"{self._boot_id} {wall} {boot}\n")
            os.replace(spare, self._path)

    def read(self) -> tuple[int, int]:
        """``(now_ns, ahead_ns)``: the time to measure ages at, and the wall clock's lead on it.

        ``ahead_ns`` is 0 unless the wall clock has been stepped forward by
        more than :attr:`SLACK_NS` since the first reading; ``now_ns`` is then
        the last trusted reading plus the time elapsed since.
        """
        wall, boot = self._clocks()
        with self._lock:
            then_wall, then_boot = self._anchor
            trusted = then_wall + (boot - then_boot)
            if wall <= trusted:
                self._anchor = (wall, boot)
                ahead = 0
            else:
                self._anchor = (trusted, boot)  # small steps add up: none is forgotten
                ahead = wall - trusted
            self._save()
        if ahead <= self.SLACK_NS:
            return wall, 0
        return trusted, ahead


def _boot_id() -> str:
    """The id of the running boot (Linux); empty where there is none: nothing is saved."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class UndoUsage:
    """Size and time label of the before-images of one position."""

    position: int
    time_ns: int
    bytes: int


@dataclass(frozen=True)
class RetentionDecision:
    """Trim the undo log up to ``trim_upto`` (0: nothing), the reasons, and an alert if any."""

    trim_upto: int
    records_bytes: int
    reasons: tuple[str, ...]
    alert: str | None
    window_share: float | None = None
    """The protected window's before-images as a share of ``max_bytes`` (None: no
    window or no budget). ``alert`` is raised from 0.8 on; an alert standing
    is cleared only under 0.7, so that a share moving around 0.8 does not
    raise and clear it over and over."""


def retention(
    usage: Sequence[UndoUsage],
    points: Sequence[RewindPoint],
    policy: RetentionPolicy,
    now_ns: int,
) -> RetentionDecision:
    """Decide what the undo log may drop (pure: the caller journals the outcome).

    Walks positions oldest first, proposing to drop a position when it is older
    than ``max_age_s`` or the log is over ``max_bytes``; then pulls the cut back
    so that it never enters the protected window and never makes fewer than
    ``min_points`` of the newest rewind points unreachable (a point at P needs
    every before-image after P).
    """
    ordered = sorted(usage, key=lambda u: u.position)
    total = sum(u.bytes for u in ordered)
    reasons: list[str] = []
    cut = 0
    remaining = total
    for item in ordered:
        too_old = policy.max_age_s is not None and now_ns - item.time_ns > policy.max_age_s * 1e9
        too_big = policy.max_bytes is not None and remaining > policy.max_bytes
        if not (too_old or too_big):
            break
        cut = item.position
        remaining -= item.bytes
        reason = "age" if too_old else "size"
        if reason not in reasons:
            reasons.append(reason)
    alert = None
    share = None
    if policy.window_s is not None:
        window_start = now_ns - policy.window_s * 1e9
        inside = [u for u in ordered if u.time_ns >= window_start]
        inside_bytes = sum(u.bytes for u in inside)
        if cut and any(u.position <= cut for u in inside):
            cut = max((u.position for u in ordered if u.time_ns < window_start), default=0)
            reasons.append("held back: window")
        if policy.max_bytes is not None:
            share = inside_bytes / max(policy.max_bytes, 1)
        if (
            policy.max_bytes is not None
            and inside_bytes > 0  # an empty log is over no budget, a 0-byte one neither
            and inside_bytes >= _ALERT_SHARE * policy.max_bytes
        ):
            alert = (
                f"undo log for the protected window holds {inside_bytes} bytes, "
                f"{inside_bytes * 100 // max(policy.max_bytes, 1)}% of the {policy.max_bytes}-byte "
                "budget: raise the budget or shorten the window before history is cut"
            )
    newest = sorted((p.position for p in points), reverse=True)[: max(policy.min_points, 0)]
    if newest and cut > min(newest):
        # The last record the oldest kept point does not need: rewinds to positions
        # between it and the point find the same state, and stay reachable.
        cut = max((u.position for u in ordered if u.position <= min(newest)), default=0)
        reasons.append("held back: rewind points")
        kept = sum(u.bytes for u in ordered if u.position > cut)
        if alert is None and policy.max_bytes is not None and kept > policy.max_bytes:
            # The budget cannot be met without cutting the points that must stay:
            # said, not done, and not silently exceeded either.
            alert = (
                f"undo log holds {kept} bytes after the newest {len(newest)} rewind point(s) "
                f"it must keep (undo_min_points), over its {policy.max_bytes}-byte budget: "
                "set a newer rewind point, or lower undo_min_points, or raise the budget"
            )
    if not any(u.position <= cut for u in ordered):
        cut = 0  # nothing left to drop there (trimmed before): no trim to journal
    trimmed = sum(u.bytes for u in ordered if u.position <= cut)
    return RetentionDecision(cut, trimmed, tuple(reasons) if cut else (), alert, share)
