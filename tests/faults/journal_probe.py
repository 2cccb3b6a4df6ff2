"""Shared by the fault tests and the child processes they start.

Not a test module (pytest collects ``test_*.py`` only). The child scripts in this
directory import it as a sibling (``sys.path[0]`` is this directory when Python
runs a script from it); the test modules import it the same way, since pytest's
``prepend`` import mode puts this directory on ``sys.path``.

Every event's content is a pure function of its ``(originator, version)``, so a
checker can verify *every* record it finds (acknowledged or not) without being
told what was written, and a writer in another process only has to report
``position originator version`` for each acknowledged event.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eventsourcing.persistence import StoredEvent

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from eventsourcing.persistence import Notification

    from xoengine.journal import LMDBApplicationRecorder

TOPIC = "tests.faults:Appended"
END_TOPIC = "tests.faults:Ended"
HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable


def state_size(seed: bytes, kind: str) -> int:
    """Varied sizes. ``small``: 0-3 KiB; ``large``: mostly small, some near a page,
    a few on overflow pages (up to 20 KiB); ``bulky``: 1-20 KiB (to fill a map fast);
    ``tiny``: under 40 bytes (many records on one page)."""
    pick = seed[0]
    spread = int.from_bytes(seed[1:4], "big")
    if kind == "bulky":
        return 1024 + spread % (19 * 1024)
    if kind == "tiny":
        return spread % 40
    if pick < 200:
        return spread % 600
    if pick < 245 or kind == "small":
        return 600 + spread % 2600
    return 3200 + spread % 17000


def event_state(originator_id: uuid.UUID, version: int, kind: str = "small") -> bytes:
    """The state of event ``version`` of ``originator_id`` (deterministic, varied size)."""
    seed = hashlib.blake2b(
        originator_id.bytes + version.to_bytes(8, "big"), digest_size=32
    ).digest()
    size = state_size(seed, kind)
    return (seed * (size // len(seed) + 1))[:size]


def make_event(
    originator_id: uuid.UUID, version: int, kind: str = "small", topic: str = TOPIC
) -> StoredEvent:
    """The stored event ``version`` of ``originator_id``."""
    return StoredEvent(
        originator_id=originator_id,
        originator_version=version,
        topic=topic,
        state=event_state(originator_id, version, kind),
    )


def read_all(recorder: LMDBApplicationRecorder, page: int = 256) -> list[Notification]:
    """Every notification, read in pages (each frame's checksum is verified on read)."""
    out: list[Notification] = []
    start = 1
    while True:
        batch = recorder.select_notifications(start, limit=page)
        out.extend(batch)
        if len(batch) < page:
            return out
        start = batch[-1].id + 1


@dataclass
class JournalCheck:
    """What :func:`check_journal` found."""

    count: int = 0
    versions: dict[uuid.UUID, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def check_records(
    notes: Iterable[Notification],
    *,
    first: int = 1,
    kind: str = "small",
    versions: dict[uuid.UUID, int] | None = None,
    streams: bool = True,
) -> JournalCheck:
    """Check positions are gapless from ``first`` and each record's content is its own.

    Also checks that each originator's versions appear in position order with no
    gap (each writer thread appends one originator's versions in order, so a
    committed set is always a prefix 1..k), unless ``streams`` is False (a read
    that starts in the middle of the journal).
    """
    result = JournalCheck(versions=dict(versions or {}))
    expected = first
    for note in notes:
        if note.id != expected:
            result.problems.append(f"position {expected} expected, found {note.id}")
            expected = note.id
        expected += 1
        result.count += 1
        oid = note.originator_id
        assert isinstance(oid, uuid.UUID)
        if note.topic not in (TOPIC, END_TOPIC):
            result.problems.append(f"position {note.id}: topic {note.topic!r}")
        if note.topic == TOPIC and note.state != event_state(oid, note.originator_version, kind):
            result.problems.append(
                f"position {note.id}: state differs from {oid} v{note.originator_version}"
            )
        last = result.versions.get(oid, 0)
        if streams and note.originator_version != last + 1:
            result.problems.append(
                f"position {note.id}: {oid} v{note.originator_version} follows v{last}"
            )
        result.versions[oid] = note.originator_version
    return result


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (os.write may write less)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class LineReader:
    """Complete lines from a raw pipe, with byte-exact control of how much is read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.eof = False
        self.total = 0

    def read_some(self, limit: int = 65536) -> list[str]:
        """One ``os.read`` of at most ``limit`` bytes; return the lines it completed."""
        if self.eof:
            return []
        chunk = os.read(self.fd, max(1, limit))
        if not chunk:
            self.eof = True
            return []
        self.total += len(chunk)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def drain(self) -> list[str]:
        """Every complete line up to end of file (an unfinished last line is dropped)."""
        lines: list[str] = []
        while not self.eof:
            lines.extend(self.read_some())
        return lines


def run_killed(argv: list[str], until: Callable[[str], bool] | None) -> tuple[list[str], str]:
    """Run a child; SIGKILL it at the first line it writes for which ``until(line)`` holds.

    ``until`` None: let it end by itself. Its stdout is read two bytes at a
    time, so the kill lands close to the line that decided it. Returns every
    line it wrote (those after the deciding one too) and its stderr.
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    assert proc.stderr is not None
    reader = LineReader(proc.stdout.fileno())
    lines: list[str] = []
    try:
        killed = False
        while not reader.eof and not killed:
            for line in reader.read_some(2):
                lines.append(line)
                killed = killed or (until is not None and until(line))
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        lines.extend(reader.drain())
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        errors = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    return lines, errors
