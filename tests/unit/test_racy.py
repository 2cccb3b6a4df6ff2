"""The racy rule: which stats cannot vouch for a file, and old records without the stat time."""

from __future__ import annotations

import uuid

from xoengine import codec
from xoengine.masterstate import RACY_WINDOW_NS, RACY_WINDOW_WHOLE_SECONDS_NS, racy
from xoengine.manifest import FileState

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
    assert racy(_file(t, t, t + RACY_WINDOW_NS - 1))
    assert not racy(_file(t, t, t + RACY_WINDOW_NS))
    assert racy(_file(t - SECOND, t, t + 1))  # the later of mtime and ctime counts


def test_whole_second_timestamps_get_the_wide_window() -> None:
    t = 1_795_000_000 * SECOND  # a filesystem without sub-second time
    assert racy(_file(t, t, t + SECOND + 500_000_000))
    assert not racy(_file(t, t, t + RACY_WINDOW_WHOLE_SECONDS_NS))


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
