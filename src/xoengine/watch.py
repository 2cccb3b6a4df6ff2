"""Live capture: watch the master roots and journal changes within a bounded delay.

Room: producers. May import ``errors``, ``walk`` and ``layout``; it drives a
scenario's capture through the one method it is given (``capture(paths)``).

watchdog (inotify on Linux) reports paths that changed; the watcher gathers
them into a dirty set and, at most ``delay`` seconds after the first change
of a burst, asks capture to journal exactly those paths (and the subtrees of
directories that appeared), so the tree is never rescanned as a whole.
Directory *modified* notifications are ignored (a directory's own mtime is
journaled by the next full capture): they would make every change in a
directory rescan it. A change of a directory's mode, owner or extended
attributes comes as an attribute event (``DirAttribEvent``, recent watchdog)
and is captured at once (a root's own, by a pass over no path: every pass
checks the roots); where watchdog reports it as *modified*, the next full
capture journals it. If the kernel's event queue overflows, the watcher
falls back to one full capture.

watchdog watches a directory it is told appeared by its path, when it reads
the event: if the directory moved away (or its parent did) before that, the
path may hold another directory by then, and its map of watched paths goes
stale. The directory that moved is not watched, and events of the one
watched come under the wrong path, for as long as the watch lasts; no scoped
pass can make up for it (review 23 E, F9). So a directory moved away or
deleted at or above one that appeared since the watches were made starts a
*rewatch*: every root is watched afresh (a new walk) and the pass is a full
capture, which sees what the stale watches missed and what changed while the
new ones were being made. ``rm -r build`` after ``mkdir build`` costs one full
pass; a directory made or moved in and left where it is costs nothing.

``stop`` journals every change made before it was called: its last pass is a
full capture, after the observer stopped. Events still queued in watchdog when
it stops are dropped (and a mark sent through the queue cannot tell a stale
event of the same file from its own), so only a scan can vouch for them.

A pass that fails (a full journal volume, the master root gone) loses nothing
it was told: the watcher tells the scenario (``_watch_failed``), then retries
with full passes, which see whatever changed meanwhile, after pauses that grow
to :data:`RETRY_MAX_S`, until one succeeds (``_watch_failed(None)``). A last
pass that fails is raised from ``stop``.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from watchdog.observers.api import ObservedWatch

    from xoengine.layout import Layout

__all__ = ["RETRY_MAX_S", "Capturing", "Watcher"]

RETRY_MAX_S = 30.0
"""The longest pause between the retries of a failing live capture."""

_APPEARED_MAX = 100_000
"""Directories (and their parents) noted as appeared before a rewatch is made to forget them."""

_STOPPED_EMITTER = "InotifyEmitter.queue_events() called when the thread is inactive"


class _QuietStop(logging.Filter):
    """Drop watchdog's error for an event read as its emitter stops (harmless: after ``stop``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _STOPPED_EMITTER


logging.getLogger("watchdog.observers.inotify").addFilter(_QuietStop())


class Capturing(Protocol):
    """What the watcher needs of a scenario."""

    layout: Layout

    def capture(self, paths: Sequence[str] | None = None) -> Any:
        """Journal changes of ``paths`` (None: everything)."""

    def _watch_failed(self, error: Exception | None) -> None:
        """Passes began to fail with ``error``; None: one succeeds again after failures."""


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, index: int, root: str) -> None:
        self.watcher = watcher
        self.index = index
        self.root = root.rstrip("/") + "/"

    def _scenario_path(self, raw: str | bytes) -> str | None:
        path = os.fsdecode(raw)
        if not path.startswith(self.root):
            return None
        rel = path[len(self.root) :]
        return self.watcher.layout.scenario_path(self.index, rel) if rel else None

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirModifiedEvent) or event.event_type in {"opened", "closed_no_write"}:
            return
        if isinstance(event, DirMovedEvent | DirDeletedEvent):
            self.watcher.directory_left(os.fsdecode(event.src_path))
        if isinstance(event, DirMovedEvent):
            self.watcher.directory_appeared(os.fsdecode(event.dest_path))
        elif isinstance(event, DirCreatedEvent):
            self.watcher.directory_appeared(os.fsdecode(event.src_path))
        paths = [event.src_path]
        if isinstance(event, FileSystemMovedEvent):
            paths.append(event.dest_path)
        scoped = [p for p in (self._scenario_path(raw) for raw in paths) if p]
        if scoped:
            self.watcher.mark(scoped)
        elif os.fsdecode(event.src_path).rstrip("/") + "/" == self.root:
            self.watcher.mark([])  # the root's own mode, owner or attributes: every pass checks


class Watcher:
    """Watches a scenario's master roots and journals changes within ``delay`` seconds."""

    def __init__(self, scenario: Capturing, *, delay: float = 1.0) -> None:
        """Watch ``scenario`` (its ``layout.roots``); journal within ``delay`` seconds."""
        self.scenario = scenario
        self.layout = scenario.layout
        self.delay = delay
        self._dirty: set[str] = set()
        self._roots_dirty = False  # a root's own metadata changed (a pass checks every root)
        self._appeared: set[str] = set()  # directories made or moved in since the watches (parents)
        self._rewatch = False  # the watches may be stale: make them again, then a full pass
        self._lock = threading.Lock()
        self._scheduling = threading.Lock()  # a rewatch against stop
        self._stopping = False
        self._watches: list[ObservedWatch] = []
        self._signal = threading.Event()
        self._stop = threading.Event()
        self._observer = Observer()
        self._thread = threading.Thread(
            target=self._run, name="xoengine-watch-capture", daemon=True
        )
        self.errors: collections.deque[BaseException] = collections.deque(maxlen=16)
        """The newest errors of failed passes (and of watchdog's stop)."""
        self.failing: Exception | None = None
        """The error of the failing passes; None while they succeed."""
        self.captures = 0
        self._retries = 0

    def start(self) -> None:
        """Start watching (the observer schedules every root recursively)."""
        self._schedule()
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching, journal every change made before the call (a full pass), join.

        An error of watchdog's as it stops (its inotify watches confused by an
        exchange of two directories, say) is kept in :attr:`errors`: the full
        pass journals what it missed, and both threads end all the same. If
        that last pass fails, its error is raised once both have ended.
        """
        try:
            with self._scheduling:  # after a rewatch under way, before the next
                self._stopping = True
            self._observer.stop()
            self._observer.join()
        except Exception as e:  # noqa: BLE001 (kept for the caller; the last pass covers it)
            self.errors.append(e)
        self._stop.set()
        self._signal.set()
        self._thread.join()
        if self.failing is not None:
            raise self.failing

    def mark(self, paths: Sequence[str]) -> None:
        """Note changed scenario paths (called from watchdog's thread); none: a root changed."""
        with self._lock:
            self._dirty.update(paths)
            self._roots_dirty |= not paths
        self._signal.set()

    def directory_appeared(self, path: str) -> None:
        """Note a directory made or moved in at ``path`` (absolute; from watchdog's thread)."""
        with self._lock:
            while path not in self._appeared:
                self._appeared.add(path)
                path, child = os.path.dirname(path), path
                if path == child:
                    break
            if len(self._appeared) > _APPEARED_MAX:  # forgotten by a rewatch
                self._rewatch = True

    def directory_left(self, path: str) -> None:
        """Note a directory moved away or deleted at ``path``: a watch under it may be stale."""
        with self._lock:
            if path not in self._appeared:
                return
            self._rewatch = True
        self._signal.set()

    def _take(self) -> tuple[set[str] | None, bool]:
        """The paths to capture (empty: only the roots; None: nothing changed), and a rewatch."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            roots, self._roots_dirty = self._roots_dirty, False
            rewatch, self._rewatch = self._rewatch, False
            if rewatch:
                self._appeared.clear()  # the new watches are made from the tree as it is now
            return (dirty if dirty or roots else None), rewatch

    def _schedule(self) -> None:
        self._watches = [
            self._observer.schedule(_Handler(self, index, root), root, recursive=True)
            for index, root in enumerate(self.layout.roots)
        ]

    def _rewatch_roots(self) -> None:
        """Watch every root afresh: watchdog's map of the watched directories may be stale."""
        with self._scheduling:
            if self._stopping:  # the last pass is a full one and needs no watches
                return
            for watch in self._watches:
                self._observer.unschedule(watch)
            self._watches = []
            self._schedule()

    def _run(self) -> None:
        while True:
            self._signal.wait()
            if not self._stop.is_set():
                # Let a burst gather for a fraction of the allowed delay, then journal it:
                # the first change of the burst is journaled within ``delay``. After a
                # failed pass, wait longer each time before the next try.
                pause = self.delay / 4
                if self.failing is not None:
                    pause = min(RETRY_MAX_S, max(self.delay, 0.5) * 2 ** min(self._retries, 8))
                self._stop.wait(pause)
            self._signal.clear()
            if self._stop.is_set():
                self._take()
                self._capture(None)  # the last pass: everything, the observer has stopped
                return
            dirty, rewatch = self._take()
            if rewatch:  # new watches, then a full pass: it sees what the stale ones missed
                self._capture(None, rewatch=True)
            elif self.failing is not None:  # a retry: a full pass sees what the failed one missed
                self._capture(None)
            elif dirty is not None:
                self._capture(sorted(dirty))

    def _capture(self, paths: list[str] | None, *, rewatch: bool = False) -> None:
        try:
            self._pass(paths, rewatch=rewatch)
        except Exception as e:  # noqa: BLE001 (told, kept, retried; the watcher goes on)
            if rewatch:
                with self._lock:
                    self._rewatch = True  # with the retry
            self.errors.append(e)
            self._retries += 1
            self._signal.set()  # a retry, after a pause
            if self.failing is None:  # the error of the outage, kept while it lasts
                self.failing = e
                self._tell(e)
            return
        self.captures += 1
        if self.failing is not None:
            self.failing, self._retries = None, 0
            self._tell(None)

    def _pass(self, paths: list[str] | None, *, rewatch: bool) -> None:
        failed: OSError | None = None
        if rewatch:
            try:
                self._rewatch_roots()
            except OSError as e:  # a root gone: the pass says so in its own terms, if it fails
                failed = e
        self.scenario.capture(paths)
        if failed is not None:
            raise failed

    def _tell(self, error: Exception | None) -> None:
        try:
            self.scenario._watch_failed(error)  # the protocol's hook
        except Exception as e:  # noqa: BLE001 (a full volume refuses the alert too: kept)
            self.errors.append(e)
