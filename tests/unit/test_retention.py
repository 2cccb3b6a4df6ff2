"""The undo-log retention policy (``rewind.retention``): a pure function, tested as one.

Usage is per journal position (before-image bytes, time label); labels never go
back (the journal's clock), so the generated usage has non-decreasing times.
A reference model states the policy in three lines and hypothesis checks the
function against it, plus the invariants on their own: nothing inside the
protected window is trimmed, and the ``min_points`` newest rewind points stay
reachable (a point at P needs every before-image after P, so the cut must be
<= P).

``RetentionClock``, the time ages are measured at, is tested with its two clocks
(wall and ``CLOCK_BOOTTIME``) moved by hand: a step of the wall clock is what
this machine cannot be asked to do under a test.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xoengine.rewind as rewind_module
from xoengine.rewind import (
    RetentionClock,
    RetentionDecision,
    RetentionPolicy,
    RewindPoint,
    UndoUsage,
    retention,
)

S = 1_000_000_000  # one second in ns
NOW = 10_000 * S


def usage(*items: tuple[int, int, int]) -> list[UndoUsage]:
    """``(position, age in seconds, bytes)`` -> usage with time labels relative to NOW."""
    return [UndoUsage(position=p, time_ns=NOW - age * S, bytes=b) for p, age, b in items]


def point(position: int, name: str | None = None) -> RewindPoint:
    return RewindPoint(name=name or f"p{position}", position=position, time_ns=0)


# Ten positions, one per 100 s, 100 bytes each: position 1 is 1000 s old, position 10 100 s.
TEN = usage(*((p, 1100 - 100 * p, 100) for p in range(1, 11)))


def test_retention_keeps_everything_without_limits() -> None:
    decision = retention(TEN, [point(1)], RetentionPolicy(min_points=0), NOW)
    assert decision == RetentionDecision(trim_upto=0, records_bytes=0, reasons=(), alert=None)


def test_retention_trims_by_age() -> None:
    # Older than 550 s: positions 1..5 (1000..600 s old).
    decision = retention(TEN, [], RetentionPolicy(max_age_s=550, min_points=0), NOW)
    assert decision.trim_upto == 5
    assert decision.records_bytes == 500
    assert decision.reasons == ("age",)
    assert decision.alert is None


def test_retention_trims_by_size_oldest_first() -> None:
    # 1000 bytes held, budget 650: the four oldest go (600 bytes remain).
    decision = retention(TEN, [], RetentionPolicy(max_bytes=650, min_points=0), NOW)
    assert decision.trim_upto == 4
    assert decision.records_bytes == 400
    assert decision.reasons == ("size",)


def test_retention_trims_by_age_then_size() -> None:
    decision = retention(TEN, [], RetentionPolicy(max_age_s=850, max_bytes=500, min_points=0), NOW)
    assert decision.trim_upto == 5
    assert decision.reasons == ("age", "size")


def test_retention_never_trims_inside_the_window() -> None:
    # The size budget wants 1..7 gone, but the window (last 450 s) starts at position 7.
    decision = retention(TEN, [], RetentionPolicy(max_bytes=300, window_s=450, min_points=0), NOW)
    assert decision.trim_upto == 6
    assert decision.records_bytes == 600
    assert decision.reasons == ("size", "held back: window")


def test_retention_window_with_nothing_outside_trims_nothing() -> None:
    decision = retention(TEN, [], RetentionPolicy(max_bytes=100, window_s=5000, min_points=0), NOW)
    assert decision.trim_upto == 0
    assert decision.records_bytes == 0
    assert decision.reasons == ()
    assert decision.alert is not None  # 1000 bytes in the window, budget 100


def test_retention_keeps_min_points_reachable() -> None:
    # Age wants 1..8 gone; the two newest points are at 3 and 6: records after 3 must stay.
    points = [point(1), point(3), point(6)]
    decision = retention(TEN, points, RetentionPolicy(max_age_s=250, min_points=2), NOW)
    assert decision.trim_upto == 3
    assert decision.records_bytes == 300
    assert decision.reasons == ("age", "held back: rewind points")


def test_retention_held_back_by_a_point_cuts_at_the_last_record_before_it() -> None:
    """Review 23 (D, F7): the cut (the rewind floor) was put at the point itself, so
    positions between the last record before it and the point, which hold the same
    replica state, were refused (E3012)."""
    sparse = [u for u in TEN if u.position in (2, 4, 8, 9)]  # no records at 5..7
    decision = retention(sparse, [point(7)], RetentionPolicy(max_bytes=1, min_points=1), NOW)
    assert decision.trim_upto == 4
    assert decision.reasons == ("size", "held back: rewind points")


def test_retention_held_back_by_points_over_budget_alerts_and_journals_no_empty_trim() -> None:
    # Was a bug (review 21, F03): with the newest point at 3 and everything up to it
    # trimmed already, every check returned trim_upto=3 with nothing to drop (an empty
    # UndoTrimmed journaled each time), and the log grew past its budget unsaid.
    after = TEN[3:]  # positions 4..10 (700 bytes) left; the point at 3 needs them all
    decision = retention(after, [point(3)], RetentionPolicy(max_bytes=200, min_points=1), NOW)
    assert (decision.trim_upto, decision.records_bytes, decision.reasons) == (0, 0, ())
    assert decision.alert is not None and "700 bytes" in decision.alert
    assert "undo_min_points" in decision.alert
    # A newer point lets the budget be met: no alert.
    decision = retention(after, [point(9)], RetentionPolicy(max_bytes=200, min_points=1), NOW)
    assert (decision.trim_upto, decision.alert) == (8, None)


def test_retention_point_order_does_not_matter() -> None:
    points = [point(6), point(1), point(3)]
    decision = retention(TEN, points, RetentionPolicy(max_age_s=250, min_points=2), NOW)
    assert decision.trim_upto == 3


def test_retention_may_trim_up_to_a_point_itself() -> None:
    # A point at P needs the records *after* P only: trimming up to P keeps it reachable.
    decision = retention(TEN, [point(5)], RetentionPolicy(max_age_s=0, min_points=1), NOW)
    assert decision.trim_upto == 5


def test_retention_min_points_zero_lets_the_budget_cut_every_point() -> None:
    decision = retention(TEN, [point(2)], RetentionPolicy(max_bytes=0, min_points=0), NOW)
    assert decision.trim_upto == 10
    assert decision.records_bytes == 1000


def test_retention_alerts_at_eighty_percent_of_the_budget_in_the_window() -> None:
    # The last 450 s hold positions 7..10: 400 bytes.
    policy = RetentionPolicy(max_bytes=500, window_s=450, min_points=0)
    decision = retention(TEN, [], policy, NOW)
    assert decision.trim_upto == 5  # the budget is met outside the window
    assert decision.alert is not None
    assert "400 bytes" in decision.alert
    assert "80%" in decision.alert


def test_retention_no_alert_below_eighty_percent() -> None:
    policy = RetentionPolicy(max_bytes=501, window_s=450, min_points=0)
    decision = retention(TEN, [], policy, NOW)
    assert decision.alert is None  # 400 / 501 = 79.8 %


def test_retention_no_alert_for_an_empty_window_under_a_zero_budget() -> None:
    """Review 23 (D, F10): "0 bytes, 0% of the 0-byte budget" was an alert."""
    policy = RetentionPolicy(max_bytes=0, window_s=100, min_points=0)
    assert retention([], [], policy, NOW).alert is None
    assert retention(TEN, [], policy, NOW).alert is not None  # 1000 bytes over a 0 budget


def test_retention_no_alert_without_a_window() -> None:
    decision = retention(TEN, [], RetentionPolicy(max_bytes=10, min_points=0), NOW)
    assert decision.alert is None


def test_retention_is_pure() -> None:
    items = list(TEN)
    points = [point(3)]
    policy = RetentionPolicy(max_age_s=250, max_bytes=300, window_s=150, min_points=1)
    first = retention(items, points, policy, NOW)
    assert retention(list(reversed(items)), points, policy, NOW) == first
    assert items == TEN
    assert points == [point(3)]


# -- properties ---------------------------------------------------------------------------------


@st.composite
def usages(draw: st.DrawFn) -> list[UndoUsage]:
    """Strictly increasing positions with non-decreasing time labels (as the journal gives)."""
    count = draw(st.integers(0, 25))
    position = 0
    time_ns = NOW - draw(st.integers(0, 5000)) * S
    out = []
    for _ in range(count):
        position += draw(st.integers(1, 5))
        time_ns += draw(st.sampled_from([0, S // 2, S, 37 * S, 300 * S]))
        out.append(UndoUsage(position, min(time_ns, NOW), draw(st.integers(0, 2000))))
    return out


policies = st.builds(
    RetentionPolicy,
    max_age_s=st.none() | st.integers(0, 6000).map(float),
    max_bytes=st.none() | st.integers(0, 30_000),
    min_points=st.integers(0, 4),
    window_s=st.none() | st.integers(0, 6000).map(float),
)


def model(
    items: list[UndoUsage], points: list[RewindPoint], policy: RetentionPolicy, now: int
) -> int:
    """The policy in words: the smallest oldest-first cut that satisfies age and size, then
    pulled back to just before the window and to the oldest of the min_points newest points."""
    cut, remaining = 0, sum(u.bytes for u in items)
    for u in items:
        old = policy.max_age_s is not None and now - u.time_ns > policy.max_age_s * S
        big = policy.max_bytes is not None and remaining > policy.max_bytes
        if not (old or big):
            break
        cut, remaining = u.position, remaining - u.bytes
    if policy.window_s is not None:
        outside = [u.position for u in items if u.time_ns < now - policy.window_s * S]
        cut = min(cut, max(outside, default=0))
    newest = sorted((p.position for p in points), reverse=True)[: policy.min_points]
    if newest and cut > min(newest):  # the last record before the oldest kept point
        cut = max((u.position for u in items if u.position <= min(newest)), default=0)
    return cut


@settings(max_examples=400, deadline=None)
@given(items=usages(), positions=st.lists(st.integers(0, 130), max_size=6), policy=policies)
def test_retention_never_trims_inside_the_window_or_past_the_newest_points(
    items: list[UndoUsage], positions: list[int], policy: RetentionPolicy
) -> None:
    points = [point(p, f"p{i}") for i, p in enumerate(positions)]
    decision = retention(items, points, policy, NOW)
    cut = decision.trim_upto
    wanted = model(items, points, policy, NOW)
    # Nothing inside the protected window goes.
    if policy.window_s is not None:
        start = NOW - policy.window_s * S
        assert all(u.time_ns < start for u in items if u.position <= cut)
    # The min_points newest points stay reachable: every record after them is kept.
    for p in sorted(positions, reverse=True)[: policy.min_points]:
        assert cut <= p
    # Without age, size or anything, nothing goes.
    if policy.max_age_s is None and policy.max_bytes is None:
        assert cut == 0
    # The numbers add up, and the decision is the model's.
    assert decision.records_bytes == sum(u.bytes for u in items if u.position <= cut)
    # A cut below every record left is none: nothing is journaled (review 21, F03: an
    # empty UndoTrimmed at every check while points held the log).
    assert cut == (wanted if any(u.position <= wanted for u in items) else 0)
    assert bool(decision.reasons) == bool(cut)
    # The alert says the window's records are at or over 80 % of the budget, or that the
    # newest min_points points hold the log over it (they cut what the budget wanted),
    # and only then.
    window_full = False
    if policy.window_s is not None and policy.max_bytes is not None:
        inside = sum(u.bytes for u in items if u.time_ns >= NOW - policy.window_s * S)
        window_full = inside > 0 and inside >= 0.8 * policy.max_bytes
    newest = sorted(positions, reverse=True)[: policy.min_points]
    unheld = model(items, points, dataclasses.replace(policy, min_points=0), NOW)
    points_full = (
        bool(newest)
        and unheld > min(newest)
        and policy.max_bytes is not None
        and sum(u.bytes for u in items if u.position > min(newest)) > policy.max_bytes
    )
    assert (decision.alert is not None) == (window_full or points_full)


@settings(max_examples=200, deadline=None)
@given(items=usages(), policy=policies)
def test_retention_meets_age_and_size_when_unconstrained(
    items: list[UndoUsage], policy: RetentionPolicy
) -> None:
    free = RetentionPolicy(max_age_s=policy.max_age_s, max_bytes=policy.max_bytes, min_points=0)
    cut = retention(items, [], free, NOW).trim_upto
    kept = [u for u in items if u.position > cut]
    if policy.max_bytes is not None:
        assert sum(u.bytes for u in kept) <= policy.max_bytes
    if policy.max_age_s is not None:
        assert all(NOW - u.time_ns <= policy.max_age_s * S for u in kept)
    # And it trims no more than it must: keeping the last trimmed position would break a limit.
    trimmed = [u for u in items if u.position <= cut]
    if trimmed:
        last = trimmed[-1]
        too_old = policy.max_age_s is not None and NOW - last.time_ns > policy.max_age_s * S
        too_big = (
            policy.max_bytes is not None
            and sum(u.bytes for u in kept) + last.bytes > policy.max_bytes
        )
        assert too_old or too_big


# -- the clock ages are measured at ---------------------------------------------------------------


class Clocks:
    """A wall clock and ``CLOCK_BOOTTIME``, as ``xoengine.rewind`` reads them."""

    CLOCK_BOOTTIME = time.CLOCK_BOOTTIME

    def __init__(self) -> None:
        self.wall = NOW
        self.boot = 7 * S

    def time_ns(self) -> int:
        return self.wall

    def clock_gettime_ns(self, which: int) -> int:
        assert which == time.CLOCK_BOOTTIME
        return self.boot

    def elapse(self, ns: int) -> None:
        self.wall += ns
        self.boot += ns


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Clocks:
    fake = Clocks()
    monkeypatch.setattr(rewind_module, "time", fake)
    return fake


def test_retention_clock_follows_the_wall_clock_as_time_passes(clocks: Clocks) -> None:
    clock = RetentionClock()
    for step in (S, 3600 * S, 10 * 86400 * S):
        clocks.elapse(step)
        assert clock.read() == (clocks.wall, 0)


def test_retention_clock_does_not_follow_a_step_forward(clocks: Clocks) -> None:
    clock = RetentionClock()
    clocks.wall += 86400 * S  # a day ahead, no time passed
    assert clock.read() == (NOW, 86400 * S)
    clocks.elapse(10 * S)
    assert clock.read() == (NOW + 10 * S, 86400 * S)
    clocks.wall -= 86400 * S  # set right
    assert clock.read() == (NOW + 10 * S, 0)


def test_retention_clock_lets_a_small_step_pass_but_adds_steps_up(clocks: Clocks) -> None:
    clock = RetentionClock()
    slack = RetentionClock.SLACK_NS
    clocks.wall += slack  # within the slack: taken as it reads
    assert clock.read() == (NOW + slack, 0)
    clocks.elapse(3600 * S)
    assert clock.read() == (NOW + slack + 3600 * S, 0)
    clocks.wall += 1  # one more ns ahead: now the steps add up past the slack
    assert clock.read() == (NOW + 3600 * S, slack + 1)


def test_retention_clock_takes_a_step_back_as_it_reads(clocks: Clocks) -> None:
    clock = RetentionClock()
    clocks.wall -= 3600 * S
    assert clock.read() == (NOW - 3600 * S, 0)
    clocks.elapse(60 * S)
    assert clock.read() == (NOW - 3540 * S, 0)
    clocks.wall += 3600 * S  # back to where it was: a step forward from the new reading
    assert clock.read() == (NOW - 3540 * S, 3600 * S)
