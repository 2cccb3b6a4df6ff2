"""The racy rule: which stats cannot vouch for a file, and old records without the stat time."""

from __future__ import annotations

import uuid

from xoengine import codec
from xoengine.manifest import FileState
from xoengine.masterstate import (
    RACY_NS_PER_BYTE,
    RACY_WINDOW_NS,
    RACY_WINDOW_WHOLE_SECONDS_NS,
    RACY_WRITE_MAX_NS,
    racy,
)

SECOND = 1_000_000_000


def _file(mtime_ns: int, ctime_ns: int, observed_ns: int, size: int = 10) -> FileState:
    return FileState(
        file_id=uuid.uuid4(),
        version=2,
        kind="file",
        size=size,
        mtime_ns=mtime_ns,
        ctime_ns=ctime_ns,
        observed_ns=observed_ns,
    )


def test_racy_depends_on_how_soon_the_stat_was_taken() -> None:
    t = 1_795_000_000 * SECOND + 123_456_789  # sub-second timestamps
    window = RACY_WINDOW_NS + 10 * RACY_NS_PER_BYTE  # a file of 10 bytes
    assert racy(_file(t, t, t + window - 1))
    assert not racy(_file(t, t, t + window))
    assert racy(_file(t - SECOND, t, t + 1))  # the later of mtime and ctime counts


def test_a_large_files_window_holds_the_time_writing_it_may_take() -> None:
    """Review 23 (E, F8): one 128 MiB pwrite (42 ms) stamped the mtime as it began; a
    capture 25 ms later read old and new bytes under the stat it left, for good."""
    t = 1_795_000_000 * SECOND + 123_456_789
    size = 128 << 20
    assert racy(_file(t, t, t + 100_000_000, size=size))  # 100 ms after: maybe in flight
    assert not racy(_file(t, t, t + 100_000_000))  # a small file: settled
    assert not racy(_file(t, t, t + SECOND, size=size))  # 1 s: written whole by then
    huge = 20 << 30  # a 20 GiB image: at most a second more, not 80 s of whole reads
    assert racy(_file(t, t, t + SECOND, size=huge))
    assert not racy(_file(t, t, t + RACY_WINDOW_NS + RACY_WRITE_MAX_NS, size=huge))


def test_whole_second_timestamps_get_the_wide_window() -> None:
    t = 1_795_000_000 * SECOND  # a filesystem without sub-second time
    assert racy(_file(t, t, t + SECOND + 500_000_000))
    assert not racy(_file(t, t, t + RACY_WINDOW_WHOLE_SECONDS_NS + 10 * RACY_NS_PER_BYTE))


def test_unknown_times_empty_files_and_directories_are_not_racy() -> None:
    t = 1_795_000_000 * SECOND + 1
    assert not racy(_file(t, t, 0))  # recorded before the stat time was journaled
    assert not racy(_file(t, t, t, size=0))  # nothing a same-size rewrite could change
    directory = _file(t, t, t)
    assert not racy(directory.evolve(kind="dir"))


def test_manifest_entries_without_the_stat_time_still_decode() -> None:
    state = _file(5, 6, 7)
    assert FileState.unpack(state.pack(), "here") == state
    old = codec.pack([state.file_id.bytes, 2, "file", 10, 0, 5, 6, 0, 0, None])
    assert FileState.unpack(old, "here") == state.evolve(observed_ns=0)
