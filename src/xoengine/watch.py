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
    DirModifiedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
    FileSystemMovedEvent,
)
from watchdog.observers import Observer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from xoengine.layout import Layout

__all__ = ["RETRY_MAX_S", "Capturing", "Watcher"]

RETRY_MAX_S = 30.0
"""The longest pause between the retries of a failing live capture."""

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
        self._lock = threading.Lock()
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
        for index, root in enumerate(self.layout.roots):
            self._observer.schedule(_Handler(self, index, root), root, recursive=True)
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

    def _take(self) -> set[str] | None:
        """The paths to capture (empty: only the roots), None if nothing changed."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            roots, self._roots_dirty = self._roots_dirty, False
            return dirty if dirty or roots else None

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
            dirty = self._take()
            if self.failing is not None:  # a retry: a full pass sees what the failed one missed
                self._capture(None)
            elif dirty is not None:
                self._capture(sorted(dirty))

    def _capture(self, paths: list[str] | None) -> None:
        try:
            self.scenario.capture(paths)
        except Exception as e:  # noqa: BLE001 (told, kept, retried; the watcher goes on)
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

    def _tell(self, error: Exception | None) -> None:
        try:
            self.scenario._watch_failed(error)  # the protocol's hook
        except Exception as e:  # noqa: BLE001 (a full volume refuses the alert too: kept)
            self.errors.append(e)
