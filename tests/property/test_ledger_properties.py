"""Ledger properties: its totals are those of a plain scan of the journal, whatever it kept.

Each example is a fresh engine (real LMDB, ``nosync``) with two scenarios whose
masters are written through ``sc.open`` (one event each: created, written,
updated, cut), files deleted and renamed, roots' modes changed. Between the
changes the example asks the ledger for the totals of either scenario between
two positions (below, at or past the journal's head, or none: up to it), and closes and reopens
the engine at random, writable or read-only. The ledger writes its totals to
the state directory every few events (``FLUSH_EVENTS`` is made 1-7 here), so
the answers come from the table, from the events read since, or both. Each
answer must equal the same totals counted by a plain scan of the journal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from xoengine import ledger as ledger_module
from xoengine.engine import Engine
from xoengine.errors import DiskFullError
from xoengine.events import APPLIED_EVENTS, event_bytes
from xoengine.ledger import OPERATIONS, operation

if TYPE_CHECKING:
    import pytest

EXAMPLES = int(os.environ.get("LEDGER_EXAMPLES", "200"))

steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("write"), st.sampled_from("ab"), st.sampled_from("xyz"), st.integers(0, 900)
        ),
        st.tuples(
            st.just("cut"), st.sampled_from("ab"), st.sampled_from("xyz"), st.integers(0, 300)
        ),
        st.tuples(
            st.just("move"), st.sampled_from("ab"), st.sampled_from("xyz"), st.sampled_from("xyz")
        ),
        st.tuples(st.just("chmod"), st.sampled_from("ab"), st.sampled_from([0o700, 0o755])),
        st.tuples(st.just("ask"), st.sampled_from("ab"), st.integers(0, 40), st.integers(0, 50)),
        st.tuples(st.just("reopen"), st.booleans()),
    ),
    max_size=60,
)


def scan(eng: Engine, scenario: str, after: int, upto: int | None) -> dict[str, Any]:
    """The totals of ``scenario``'s applied events in (after, upto], counted one by one."""
    found = [
        (p, e) for p, e in eng._iter_events(APPLIED_EVENTS, after, upto) if e.scenario == scenario
    ]
    counts = dict.fromkeys(OPERATIONS, 0)
    for _, e in found:
        op = operation(e)
        if op in counts:
            counts[op] += 1
    return {
        "events": len(found),
        "bytes": sum(event_bytes(e) for _, e in found),
        "first": found[0][0] if found else None,
        "counts": counts,
    }


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flush=st.integers(1, 7), script=steps)
def test_ledger_totals_are_a_scan_of_the_journal(flush: int, script: list[tuple[Any, ...]]) -> None:
    base = tempfile.mkdtemp(prefix="xo-ledgerprop-")
    saved = ledger_module.FLUSH_EVENTS
    ledger_module.FLUSH_EVENTS = flush  # type: ignore[misc]
    masters = {s: os.path.join(base, f"m{s}") for s in "ab"}
    for master in masters.values():
        os.mkdir(master)
    state = os.path.join(base, "state")
    eng = Engine.open(state, durability="nosync")
    try:
        for s, master in masters.items():
            eng.create_scenario(s, master=master, replicas={"r": os.path.join(base, f"r{s}")})
        for step in script:
            kind = step[0]
            if kind == "reopen":
                eng.close()
                eng = Engine.open(state, durability="nosync", readonly=step[1])
                continue
            if kind == "ask":
                _, s, a, b = step  # fortieths of the head (past it up to 49; 50: None)
                head = eng.last_position()
                after, upto = head * a // 40, None if b == 50 else head * b // 40
                got = eng._ledger.span(s, after, upto)
                stored = eng._ledger._stored
                event("from the table" if after < stored else "read since")
                event("read-only" if eng.readonly else "writable")
                want = scan(eng, s, after, upto)
                assert (got.events, got.bytes, got.first, got.counts) == (
                    want["events"],
                    want["bytes"],
                    want["first"],
                    want["counts"],
                ), (step, eng.last_position())
                continue
            if eng.readonly:
                continue
            sc = eng.scenario(step[1])
            master = masters[step[1]]
            if kind == "chmod":
                os.chmod(master, step[2])
                sc.capture()
                continue
            path = os.path.join(master, step[2])
            if kind == "write":
                with sc.open(step[2], "r+b" if os.path.exists(path) else "w+b") as f:
                    f.seek(min(step[3], os.path.getsize(path)))
                    f.write(b"w" * (step[3] % 97 + 1))
            elif kind == "cut" and os.path.exists(path):
                with sc.open(step[2], "r+b") as f:
                    f.truncate(step[3])
            elif kind == "move" and os.path.exists(path):
                os.rename(path, os.path.join(master, step[3]))
                sc.capture()
    finally:
        ledger_module.FLUSH_EVENTS = saved  # type: ignore[misc]
        eng.close()
        shutil.rmtree(base, ignore_errors=True)


def test_an_open_reads_only_what_the_ledger_table_does_not_hold(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was O(journal) at every open: the first statistics decoded every event again."""
    monkeypatch.setattr(ledger_module, "FLUSH_EVENTS", 10)
    master = tmp_path / "m"
    master.mkdir()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r": str(tmp_path / "r")})
        sc.start()
        with sc.open("f", "w+b") as f:
            for i in range(95):
                f.write(b"%d" % i)
                f.flush()
        sc.wait_replicated()
        first = sc.statistics().replicas["r"]
    for readonly in (False, True):
        with Engine.open(tmp_path / "state", durability="nosync", readonly=readonly) as eng:
            read: list[int] = []
            source = eng._ledger._source

            def counting(
                after: int, upto: int, source: Any = source, read: list[int] = read
            ) -> Any:
                for position, event in source(after, upto):
                    read.append(position)
                    yield position, event

            eng._ledger._source = counting
            again = eng.scenario("s").statistics().replicas["r"]
            assert again.files_replicated == first.files_replicated > 95
            assert again.bytes_replicated == first.bytes_replicated
            assert len(read) < 10, read  # what the last write of the table left out


def test_a_ledger_write_that_fails_loses_no_event(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A review finding: a failed write of the table (a full disk) dropped the events
    read since the last one, and the next write stored the undercount."""
    monkeypatch.setattr(ledger_module, "FLUSH_EVENTS", 10)
    master = tmp_path / "m"
    master.mkdir()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r": str(tmp_path / "r")})

        def writes(n: int) -> None:
            with sc.open("f", "r+b" if (master / "f").exists() else "w+b") as f:
                for i in range(n):
                    f.write(b"%05d" % i)
                    f.flush()

        def totals() -> tuple[int, int]:
            span = eng._ledger.span("s", 0)
            return span.events, span.bytes

        def scanned() -> tuple[int, int]:
            want = scan(eng, "s", 0, None)
            return want["events"], want["bytes"]

        writes(6)
        assert totals() == scanned()  # read, in memory
        writes(20)
        real = eng.store.write
        failed: list[str] = []

        def full(work: Any, **kwargs: Any) -> Any:
            if work.__qualname__.startswith("Ledger._flush") and not failed:
                failed.append(work.__qualname__)
                raise DiskFullError(path=str(tmp_path))
            return real(work, **kwargs)

        monkeypatch.setattr(eng.store, "write", full)
        assert totals() == scanned()  # the write failed; the answer is right, no error
        assert failed
        writes(30)
        assert totals() == scanned()  # written at the next try
        assert eng._ledger._stored > 0
    with Engine.open(tmp_path / "state", durability="nosync", readonly=True) as eng:
        assert totals() == scanned()
