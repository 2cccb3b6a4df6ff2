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

``stop`` journals every change reported before it was called: it opens a file
of each root and waits until watchdog hands over that open, which inotify
reports after every earlier change; then the capture thread journals what is
pending. Where that cannot be done (a root with no file it may open, another
observer than inotify's, a mark that does not arrive), the last pass is a full
capture instead.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Final, Protocol

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

__all__ = ["Capturing", "Watcher"]

_DRAIN_TIMEOUT_S: Final = 5.0
"""Longest ``stop`` waits for a root's mark to come through watchdog (then: a full capture)."""
_MARK_SEARCH: Final = 64
"""Directories looked into, per root, for a file to open as the mark."""
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


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, index: int, root: str) -> None:
        self.watcher = watcher
        self.index = index
        self.root = root.rstrip("/") + "/"
        self.mark_path: str | None = None  # the file stop() opens, once it does
        self.drained = threading.Event()  # its close came through: all before it did too

    def _scenario_path(self, raw: str | bytes) -> str | None:
        path = os.fsdecode(raw)
        if not path.startswith(self.root):
            return None
        rel = path[len(self.root) :]
        return self.watcher.layout.scenario_path(self.index, rel) if rel else None

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type == "closed_no_write":
            path = os.path.normpath(os.fsdecode(event.src_path))
            if self.mark_path is not None and path == self.mark_path:
                self.drained.set()
            return
        if isinstance(event, DirModifiedEvent) or event.event_type == "opened":
            return
        paths = [event.src_path]
        if isinstance(event, FileSystemMovedEvent):
            paths.append(event.dest_path)
        scoped = [p for p in (self._scenario_path(raw) for raw in paths) if p]
        if scoped:
            self.watcher.mark(scoped)
        elif os.fsdecode(event.src_path).rstrip("/") + "/" == self.root:
            self.watcher.mark([])  # the root's own mode, owner or attributes: every pass checks

    def open_mark(self) -> bool:
        """Open and close a file of the root (changing nothing); False if there is none to open.

        inotify reports the open and close after every change it reported before.
        """
        pending = [self.root]
        for directory in itertools.islice(pending, _MARK_SEARCH):  # breadth first, as it grows
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) and self._open_close(entry.path):
                        return True
        return False

    def _open_close(self, path: str) -> bool:
        self.mark_path = os.path.normpath(path)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC
        try:
            os.close(os.open(path, flags))
        except OSError:
            self.mark_path = None
            return False
        return True


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
        self._handlers: list[_Handler] = []
        self._rescan = False  # the last pass captures everything (stop could not drain)
        self._thread = threading.Thread(
            target=self._run, name="xoengine-watch-capture", daemon=True
        )
        self.errors: list[BaseException] = []
        self.captures = 0

    def start(self) -> None:
        """Start watching (the observer schedules every root recursively)."""
        for index, root in enumerate(self.layout.roots):
            handler = _Handler(self, index, root)
            self._handlers.append(handler)
            self._observer.schedule(handler, root, recursive=True)
        self._observer.start()
        self._thread.start()

    def stop(self) -> None:
        """Journal every change reported before the call, then stop and join both threads."""
        if self._observer.is_alive() and not self._drain():
            self._rescan = True
        self._observer.stop()
        self._observer.join()
        self._stop.set()
        self._signal.set()
        self._thread.join()

    def _drain(self) -> bool:
        """Wait until watchdog handed over every change reported so far; False if it cannot."""
        if not type(self._observer).__name__.startswith("Inotify"):
            return False  # no open events: nothing to wait for
        if not all(handler.open_mark() for handler in self._handlers):
            return False
        deadline = time.monotonic() + _DRAIN_TIMEOUT_S
        return all(
            handler.drained.wait(max(0.0, deadline - time.monotonic()))
            for handler in self._handlers
        )

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
                # the first change of the burst is journaled within ``delay``.
                self._stop.wait(self.delay / 4)
            self._signal.clear()
            if self._stop.is_set():
                # The last pass: the observer has stopped, and stop() drained it first.
                dirty = self._take()
                if self._rescan:
                    self._capture(None)
                elif dirty is not None:
                    self._capture(sorted(dirty))
                return
            dirty = self._take()
            if dirty is not None:
                self._capture(sorted(dirty))

    def _capture(self, paths: list[str] | None) -> None:
        try:
            self.scenario.capture(paths)
            self.captures += 1
        except Exception as e:  # noqa: BLE001 (kept for the caller; the watcher goes on)
            self.errors.append(e)
