"""The scenario's background workers: the applier thread, the scan follower, tree comparison.

Room: engine (beside ``scenario``, which starts them; they see it only for
type checking). May import every lower room.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TYPE_CHECKING, Final

from xoengine.errors import (
    ApplierFailedError,
    ScenarioStateError,
    XoError,
)
from xoengine.events import (
    root_label,
)
from xoengine.record import iso_time

if TYPE_CHECKING:
    from collections.abc import Mapping

    from xoengine.replica import ReplicaApplier
    from xoengine.scenario import Scenario
    from xoengine.tree import ReplicaTree
    from xoengine.walk import Entry


__all__ = ["ApplierThread", "ScanFollower", "coded_failure", "compare_trees"]

_Seen = tuple[str, int, str, tuple[int, int], dict[str, bytes], int]
"""A walked entry as the difference report compares it: kind, mode, content digest or link
target, owner, extended attributes, mtime (ns)."""


def compare_trees(scenario: Scenario, replica_tree: ReplicaTree) -> dict[str, str]:
    """Hash both trees: path -> what differs (missing, extra, content, kind, mode, owner...).

    As far as the replica's tree can hold them: owners where it may give them
    (root), extended attributes but those it refused (:meth:`ReplicaTree.comparable`).
    """
    from xoengine.tree import TMP_PREFIX, ReplicaTree  # noqa: PLC0415
    from xoengine.walk import walk, xattrs_below  # noqa: PLC0415

    owners = replica_tree.owners
    replica_root = replica_tree.root
    unlisted: dict[str, str] = {}  # directory -> the side that could not list it

    def digest(root: str, prefix: str, side: str) -> dict[str, _Seen]:
        out: dict[str, _Seen] = {}
        files = ReplicaTree(
            root, fsync=False, create=False, replica=False
        )  # read only: its streamed digest
        tree = walk(
            root,
            scenario.capture_engine.include,
            scenario.capture_engine.exclude,
            reserved=TMP_PREFIX,  # never replicated; on a replica, what a kill left
        )
        with contextlib.closing(tree):
            for entry in tree:
                if entry.kind == "special" and side == "master":
                    continue  # fifos, sockets, devices: never replicated (W2003), not missing
                if entry.kind == "file":
                    value = files.digest128(entry.relpath).hex()
                else:
                    value = entry.target or ""
                try:  # as far as the replica can be given them
                    xattrs = replica_tree.comparable(xattrs_below(root, entry.relpath))
                except FileNotFoundError:
                    xattrs = {}
                out[prefix + entry.relpath] = (
                    entry.kind,
                    entry.mode,
                    value,
                    (entry.uid, entry.gid),
                    xattrs,
                    entry.mtime_ns,
                )
        unlisted.update((prefix + u, side) for u in tree.unlisted)
        return out

    master: dict[str, _Seen] = {}
    for index, root in enumerate(scenario.layout.roots):
        master.update(digest(root, scenario.layout.prefix(index), "master"))
    replica = digest(replica_root, "", "replica")
    for index in range(len(scenario.layout.roots)):
        prefix = scenario.layout.prefix(index).rstrip("/")
        if prefix:
            replica.pop(prefix, None)
    # A directory one side could not list: its contents are unknown there, not missing.
    differences = {d: f"unreadable on the {side}" for d, side in unlisted.items()}
    for path in sorted(set(master) | set(replica), key=os.fsencode):
        a, b = master.get(path), replica.get(path)
        if unlisted and (path in unlisted or any(path.startswith(d + "/") for d in unlisted)):
            continue
        if a is None:
            differences[path] = "only on the replica"
        elif b is None:
            differences[path] = "missing on the replica"
        elif a[0] != b[0]:
            differences[path] = f"kind {a[0]} vs {b[0]}"
        elif a[2] != b[2] and a[0] != "dir":
            differences[path] = "content" if a[0] == "file" else "link target"
        elif a[1] != b[1] and a[0] != "symlink":
            differences[path] = f"mode {oct(a[1])} vs {oct(b[1])}"
        elif owners and a[3] != b[3]:
            differences[path] = f"owner {a[3][0]}:{a[3][1]} vs {b[3][0]}:{b[3][1]}"
        elif a[4] != b[4]:
            differences[path] = _xattrs_differ(a[4], b[4])
        elif a[0] != "dir" and not _same_time(a[5], b[5]):  # a directory's moves with entries
            shown = iso_time(a[5]), iso_time(b[5])  # to the microsecond, ns if alike there
            if shown[0] == shown[1]:
                shown = str(a[5]), str(b[5])
            differences[path] = f"mtime {shown[0]} vs {shown[1]}"
    for index, root in enumerate(scenario.layout.roots):  # the roots' own metadata
        name = scenario.layout.prefix(index).rstrip("/")
        if (why := _root_differs(root, name, replica_tree)) is not None:
            differences[root_label(name)] = why
    return differences


def _same_time(master_ns: int, replica_ns: int) -> bool:
    """Whether a replica's mtime is the master's, as far as its file system keeps times.

    To the nanosecond; to the second on one that keeps whole seconds (an ext4
    with small inodes; FAT keeps two).
    """
    if replica_ns % 10**9 == 0 and master_ns % 10**9 != 0:
        return abs(master_ns - replica_ns) < 2 * 10**9
    return master_ns == replica_ns


def _root_differs(root: str, name: str, replica_tree: ReplicaTree) -> str | None:
    """What differs between a master root and its copy (mode, owner, attributes), if anything."""
    from xoengine.walk import own_meta  # noqa: PLC0415

    try:
        master = own_meta(root)
    except OSError:
        return None  # the walk said what is wrong with it
    xattrs = replica_tree.comparable(master["xattrs"])
    have = replica_tree.root_meta(name)
    if not have:
        return "missing on the replica"
    if have["mode"] != master["mode"]:
        return f"mode {oct(master['mode'])} vs {oct(have['mode'])}"
    if replica_tree.owners and have["owner"] != master["owner"]:
        (a, b), (c, d) = master["owner"], have["owner"]
        return f"owner {a}:{b} vs {c}:{d}"
    theirs = replica_tree.comparable(have["xattrs"])
    return _xattrs_differ(xattrs, theirs) if theirs != xattrs else None


def _xattrs_differ(ours: dict[str, bytes], theirs: dict[str, bytes]) -> str:
    """How two sets of extended attributes differ: the names in one only or with other values."""
    names = sorted(set(ours) ^ set(theirs) | {n for n in ours if ours[n] != theirs.get(n)})
    return f"extended attributes {', '.join(names)}"


class ApplierThread:
    """Runs one replica's applier while the scenario runs; woken by appends."""

    def __init__(self, scenario: Scenario, replica: str, applier: ReplicaApplier) -> None:
        self.scenario = scenario
        self.replica = replica
        self.applier = applier
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"xoengine-apply:{scenario.name}:{replica}", daemon=True
        )

    def start(self) -> None:
        """Follow the journal's commits and start the thread."""
        self.scenario._engine.store.listen(self._wake)
        self._thread.start()

    def wake(self) -> None:
        """Look for new events now."""
        self._wake.set()

    def drain(self) -> None:
        """Apply everything journaled by now before the thread is stopped.

        A failure meanwhile is not raised: the thread reported it (an alert,
        the scenario in Problem) and the next start retries from the tracking
        position.
        """
        if self.error is None:
            with contextlib.suppress(XoError):
                self.wait_position(self.scenario._engine.last_position(), None)

    def stop(self) -> None:
        """End the thread (after the group of events it is applying) and stop following commits."""
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.scenario._engine.store.unlisten(self._wake)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.applier.apply_available(stopping=self._stop.is_set)
                self.scenario._alert_left_out()
                if self.scenario._def.state == "Problem":
                    self.scenario._check_state()  # back under the spool limit?
            except Exception as e:  # noqa: BLE001 (reported, never lost with the thread)
                self._fail(e)
            with self._progress:
                self._progress.notify_all()

    def _fail(self, e: Exception) -> None:
        # The thread ends; the error is journaled (alert), the scenario goes to
        # Problem, waiters get the error, and resume() starts a fresh thread.
        self.error = coded_failure(self.replica, e)
        self._stop.set()
        self.scenario._applier_failed(self.replica, self.error)

    def wait_position(self, target: int, deadline: float | None) -> bool:
        """Wait until the replica applied ``target`` (False at ``deadline``; its error raised)."""
        with self._progress:
            while self.applier.position() < target:
                if self.error is not None:
                    raise self.error
                if self._stop.is_set():
                    self.applier.apply_available(upto=target)
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wake.set()
                self._progress.wait(timeout=remaining)
        return True


def coded_failure(replica: str, e: Exception) -> XoError:
    """What an applier's exception is reported as: itself if coded, else E3007 caused by it."""
    if isinstance(e, XoError):
        return e
    error = ApplierFailedError(replica=replica, detail=repr(e))
    error.__cause__ = e
    return error


_FOLLOW_NOTIFY_EVERY: Final = 64


class ScanFollower:
    """What a synchronizer running beside a capture scan waits on (see ``synchronize``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._walked = False
        self.scan_walk: Mapping[str, Entry] = {}  # the master as the scan walked it
        self._read: set[str] = set()
        self._done = False
        self._position: int | None = None

    def walked(self, entries: Mapping[str, Entry]) -> None:
        """The scan finished walking the tree: ``entries``, path by path."""
        with self._cond:
            self.scan_walk = entries
            self._walked = True
            self._cond.notify_all()

    def read(self, path: str) -> None:
        """The scan read ``path`` (its events are journaled or queued)."""
        with self._cond:
            self._read.add(path)
            # Wake the synchronizer every few files, not every file: both threads
            # need the GIL, and a hand-over per small file costs more than it saves.
            if len(self._read) % _FOLLOW_NOTIFY_EVERY == 0:
                self._cond.notify_all()

    def finish(self, position: int | None) -> None:
        """The scan ended: at ``position``, or failed (None)."""
        with self._cond:
            self._done = True
            self._position = position
            self._cond.notify_all()

    def _check(self) -> None:
        if self._done and self._position is None:
            raise ScenarioStateError(
                name="*", state="capture failed", action="finish a synchronization"
            )

    def wait_walked(self) -> None:
        """Wait for the scan's walk (raise if the scan failed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._walked or self._done)
            self._check()

    def wait_read(self, path: str) -> None:
        """Wait until the scan read ``path`` (raise if the scan failed)."""
        with self._cond:
            self._cond.wait_for(lambda: path in self._read or self._done)
            self._check()

    def wait_done(self) -> int:
        """Wait for the scan's end; return its last position (raise if it failed)."""
        with self._cond:
            self._cond.wait_for(lambda: self._done)
            self._check()
            assert self._position is not None
            return self._position
