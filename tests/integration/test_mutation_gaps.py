"""Behaviour of rewind, forensics and retention that no other test pinned (review 18).

Each test closes a gap found by mutation testing: a hand-made change to
``rewind.py``, ``forensic.py`` or ``scenario.py`` that the rest of the suite
let through. The mutant each one kills is named in its first comment (see
the review's REPORT.md).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from scenario_kit import new_scenario, write

from xoengine.engine import Engine
from xoengine.errors import ReplicaDivergedError
from xoengine.events import ContentReplaced
from xoengine.forensic import Forensics
from xoengine.rewind import RetentionPolicy, UndoUsage, retention
from xoengine.testing import snapshot_contents

S = 1_000_000_000  # one second in ns
NOW = 10_000 * S


# -- retention ---------------------------------------------------------------------------------


def test_a_position_labelled_exactly_at_the_window_start_is_inside_the_window() -> None:
    """The protected window includes its first instant: a record labelled at it is never trimmed."""
    # M11: `u.time_ns >= window_start` -> `>`.
    ten = [UndoUsage(p, NOW - (1100 - 100 * p) * S, 100) for p in range(1, 11)]
    # The budget wants 1..7 gone; position 7 is labelled 400 s ago, the window's start.
    decision = retention(ten, [], RetentionPolicy(max_bytes=300, window_s=400, min_points=0), NOW)
    assert decision.trim_upto == 6
    assert decision.reasons == ("size", "held back: window")
    assert decision.alert is not None and "holds 400 bytes" in decision.alert


def test_a_configured_budget_keeps_the_newest_point_reachable_by_default(tmp_path: Path) -> None:
    """Without ``undo_min_points``, a configured budget still keeps the newest rewind point."""
    # M21: the default of `undo_min_points` 1 -> 0.
    master = tmp_path / "master"
    write(master / "a", b"first")
    eng = Engine.open(tmp_path / "state", durability="nosync")
    try:
        sc = eng.create_scenario(
            "fx",
            master=str(master),
            replicas={"r1": str(tmp_path / "r1")},
            undo_max_bytes=0,
            undo_check_interval=10**9,  # trimmed below by the explicit call only
        )
        sc.start()
        write(master / "a", b"second version")
        sc.capture()
        point = sc.set_rewind_point("keep")
        want = snapshot_contents(master)
        write(master / "a", b"third, the newest")
        write(master / "b", b"new")
        sc.capture()
        sc.wait_replicated()
        decisions = sc.trim_undo()  # the scenario's options: budget 0, default min_points
        assert 0 < decisions["r1"].trim_upto <= point.position
        assert sc.rewind_floor("r1") <= point.position
        assert sc.rewind("r1", point) == point.position
        assert snapshot_contents(tmp_path / "r1") == want
    finally:
        eng.close()


# -- bursts ------------------------------------------------------------------------------------


def test_extended_attribute_changes_alone_are_no_burst() -> None:
    """A mass change of extended attributes (a backup tool's tags) is not mass damage."""
    # M35: "xattrs" dropped from the operations that are no damage.
    files = [uuid.uuid4() for _ in range(12)]
    load = [(1 + i, 0, fid, "created") for i, fid in enumerate(files)]
    tagged = [(20 + i, 100 * S, fid, "xattrs") for i, fid in enumerate(files)]
    assert Forensics._burst(load + tagged, 10, 60 * S) == (None, 0)


# -- held spans ---------------------------------------------------------------------------------


def test_a_truncation_starts_the_span_of_the_bytes_a_file_holds(tmp_path: Path) -> None:
    """``held`` at or after a truncation names the truncation as ``since``, and as ``until`` before it."""
    # M40: a truncation not taken as a change that gives the path its bytes.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"0123456789" * 10)
        sc.start()
        with sc.open("f", "r+b") as f:
            f.write(b"AB")
        with sc.open("f", "r+b") as f:
            f.truncate(50)
        history = eng.history("fx", "f")
        wrote = next(e for e in reversed(history) if e.operation == "written")
        cut = next(e for e in reversed(history) if e.operation == "truncated")
        assert wrote.position < cut.position
        span = eng.held("fx", "f", cut.position)
        assert (span.since, span.until) == (cut, None)
        span = eng.held("fx", "f", cut.position - 1)
        assert (span.since, span.until) == (wrote, cut)
    finally:
        eng.close()


# -- diff ----------------------------------------------------------------------------------------


def test_diff_takes_a_metadata_change_at_its_lower_bound_as_part_of_the_start(
    tmp_path: Path,
) -> None:
    """A chmod journaled at ``from_position`` itself belongs to the start state of a diff."""
    # M30: `_meta_moved` takes `pos >= low` as after the start.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "b", b"bytes")
        os.chmod(master / "b", 0o644)
        sc.start()
        for mode in (0o600, 0o644, 0o600):
            os.chmod(master / "b", mode)
            sc.capture()
        changes = [e for e in eng.history("fx", "b") if e.operation == "metadata"]
        assert [(e.mode or 0) & 0o777 for e in changes] == [0o600, 0o644, 0o600]
        low, high = changes[0].position, changes[-1].position
        assert eng.diff("fx", low, high).metadata == []  # 0o600 at both ends
        assert eng.diff("fx", low, changes[1].position).metadata == ["b"]
    finally:
        eng.close()


def test_diff_lists_a_file_whose_bytes_changed_as_modified_not_as_metadata(
    tmp_path: Path,
) -> None:
    """A file written and chmodded between two instants is ``modified``; ``metadata`` is bytes-untouched only."""
    # M29: the `fid not in touched` condition of `metadata` dropped.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a", b"0123456789")
        write(master / "b", b"only chmodded")
        os.chmod(master / "a", 0o644)
        os.chmod(master / "b", 0o644)
        sc.start()
        start = eng.last_position()
        with sc.open("a", "r+b") as f:
            f.seek(2)
            f.write(b"XY")
        os.chmod(master / "a", 0o600)
        os.chmod(master / "b", 0o600)
        sc.capture()
        diff = eng.diff("fx", start, eng.last_position())
        assert diff.modified == {"a": [[2, 2]]}
        assert diff.metadata == ["b"]
    finally:
        eng.close()


# -- difference report ---------------------------------------------------------------------------


def test_difference_report_counts_a_paths_moved_entries_once(tmp_path: Path) -> None:
    """A path renamed away twice counts what the replica holds below it once."""
    # M25: the `"entries_moved" not in entry` guard dropped.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "d" / "a", b"a")
        write(master / "d" / "sub" / "b", b"b")
        sc.start()
        sc.suspend("r1")
        os.rename(master / "d", master / "e")
        sc.capture()
        write(master / "d" / "n", b"new")
        sc.capture()
        os.rename(master / "d", master / "f")
        sc.capture()
        report = sc.difference_report("r1")
        assert report["pending"]["d"]["renamed_to"] == "f"
        assert report["pending"]["d"]["entries_moved"] == 3
        assert report["pending_moved"] == 3
    finally:
        eng.close()


def test_difference_report_counts_the_literal_bytes_of_a_pending_delta(tmp_path: Path) -> None:
    """A pending delta (bytes inserted at the front) counts its literal bytes, as history shows."""
    # M24: a ContentReplaced counted as 0 pending bytes.
    eng, sc, master = new_scenario(tmp_path)
    try:
        body = os.urandom(256 * 1024)
        write(master / "big", body)
        sc.start()
        sc.suspend("r1")
        write(master / "big", b"inserted at the front" + body)
        sc.capture()
        last = eng.history("fx", "big")[-1]
        assert last.operation == "replaced"  # the premise: journaled as a delta
        # Every byte moved: history says so; the pending bytes are the delta's new data.
        assert last.ranges == [[0, len(body) + 21]]
        (_, delta) = list(eng._iter_events((ContentReplaced,)))[-1]
        literal = sum(op[2] for op in delta.ops if op[0] == "data")
        assert 0 < literal < len(body)
        report = sc.difference_report("r1")
        assert report["pending"]["big"] == {"events": 1, "bytes": literal}
        assert report["pending_bytes"] == literal
    finally:
        eng.close()


# -- rewind ----------------------------------------------------------------------------------------


def test_a_rewind_stopped_midway_holds_the_position_below_what_it_undid(tmp_path: Path) -> None:
    """A rewind that stops on a diverged file reports the position whose state the replica holds."""
    # M08: a commit of undone records leaves the applied position at the oldest of them.
    eng, sc, master = new_scenario(tmp_path)
    try:
        content = bytes(range(256)) * 256
        write(master / "f.bin", content)
        write(master / "g", b"old bytes of g")
        sc.start()
        point = sc.set_rewind_point("P")
        write(master / "f.bin", content[:1000] + b"INSERTED" + content[1000:])  # a shifting delta
        sc.capture()
        with sc.open("g", "r+b") as f:
            f.write(b"NEW")  # in place, after the delta: undone first, and committed alone
        written = eng.history("fx", "g")[-1].position
        sc.wait_replicated()
        with open(tmp_path / "r1" / "f.bin", "r+b") as f:  # edited by hand: the delta's undo stops
            f.seek(30000)
            f.write(b"HAND")
        with pytest.raises(ReplicaDivergedError):
            sc.rewind("r1", point)
        held = sc.applied_position("r1")
        assert (tmp_path / "r1" / "g").read_bytes() == b"old bytes of g"
        assert held < written
        with eng.file_at("fx", "g", held) as f:
            assert f.read() == b"old bytes of g"
    finally:
        eng.close()
