"""Journal append throughput: xoengine's LMDB recorder beside its anchors, in one run.

    python benchmarks/bench_journal.py            # full run (about 100 s)
    python benchmarks/bench_journal.py --quick    # smoke run (a few seconds)

Cases (events/s; every case gets a fresh store in a temporary directory):

1. raw py-lmdb, the ceiling: position-keyed appends framed exactly like
   ``xoengine.codec.frame``, batch 100, sync=True + metasync=True (and, for
   reference, the same plus a put into a uuid-keyed stream index, and the same
   at batch 2: what one Application save commits, the floor of that path);
2. ``LMDBApplicationRecorder.insert_events`` at batch 1 and 100, durability
   ``sync`` and ``nosync`` (plus reference rows: ``metasync-off``, and
   time-ordered uuid7-style originators instead of uuid4);
3. eventsourcing's SQLite recorder (a file, WAL, as the library sets it up) and
   POPO recorder at batch 1 and 100 (and batch 100 with uuid7 originators, so
   that the uuid7 ratio compares like with like);
4. group commit: 4 threads each appending one event per call, at ``sync``;
5. the Application path (create an aggregate, trigger one event, save) on
   xoengine (msgpack and JSON transcoders, ``sync``), on SQLite and on POPO.

Every on-disk store is first filled with ``--prefill`` events (default 50,000,
written in batches of 1,000 and flushed before timing), so that the B-trees are
past their first few pages: an empty store flatters random-key indexes, and
its figures would depend on how long the case runs. ``--prefill 0`` measures
empty stores.

Each case runs ``--rounds`` times (interleaved, so that a slow patch of a
shared disk does not land on one case only) for about ``--seconds`` each or
until its event pool is used up; the table shows the median round. The two
sides of each target ratio run back to back in every round, and a ratio is the
median over rounds of the ratio within a round, which cancels most of the
noise of a shared machine. PASS/FAIL lines close the output (the exit status
is 0 either way: this is a measurement, not a test).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import lmdb
import msgpack
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent
from eventsourcing.popo import POPOApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

from xoengine import codec
from xoengine.datastore import open_store
from xoengine.journal import LMDBApplicationRecorder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

TOPIC = "xoengine.replication:ReplicaVolume.BlocksWritten"
PREFILL_BATCH = 1000

# -- workload ------------------------------------------------------------------------


def make_state(i: int) -> bytes:
    """A realistic ~150-byte event state: one write to a replicated file."""
    return msgpack.packb(
        {
            "timestamp": 1_760_000_000_000_000 + i,
            "path": f"/srv/share/projects/2025/q{i % 4}/report-{i % 9973:05d}.docx",
            "offset": (i * 4096) % (1 << 30),
            "length": 4096 * (1 + i % 16),
            "blob": (i.to_bytes(8, "big") * 4)[:25],
            "host": "fileserver-03",
            "seq": i,
        },
        use_bin_type=True,
    )


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7 layout): new ids sort after old ones."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (ms << 80)
        | (0x7 << 76)
        | (((rand >> 62) & 0xFFF) << 64)
        | (0b10 << 62)
        | (rand & ((1 << 62) - 1))
    )
    return uuid.UUID(int=value)


def make_events(
    n: int, *, start: int = 0, ids: Callable[[], uuid.UUID] = uuid.uuid4
) -> list[StoredEvent]:
    """``n`` events, each of a new originator (version 1), like aggregate creation."""
    return [
        StoredEvent(originator_id=ids(), originator_version=1, topic=TOPIC, state=make_state(i))
        for i in range(start, start + n)
    ]


def batches(events: Sequence[StoredEvent], size: int) -> list[Sequence[StoredEvent]]:
    return [events[i : i + size] for i in range(0, len(events) - size + 1, size)]


@dataclass
class Result:
    events: int
    seconds: float
    commits: int | None = None  # LMDB transactions committed, where known

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def timed(calls: Iterable[Any], fn: Callable[[Any], int], seconds: float) -> Result:
    """Call ``fn`` on each item of ``calls`` until they run out or ``seconds`` pass."""
    done = 0
    gc.collect()
    start = time.perf_counter()
    deadline = start + seconds
    for item in calls:
        done += fn(item)
        # ~60 ns a read: noise beside even the cheapest call here (POPO, ~3 µs).
        if time.perf_counter() >= deadline:
            break
    return Result(done, time.perf_counter() - start)


def flush_file(path: str) -> None:
    """fsync one file, so that prefilled pages are not flushed by the first timed commit."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- cases -----------------------------------------------------------------------------


class Workdir:
    """One temporary directory per case; removed afterwards."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.n = 0

    @contextlib.contextmanager
    def new(self, name: str) -> Iterator[str]:
        self.n += 1
        path = os.path.join(self.root, f"{self.n:03d}-{name}")
        os.makedirs(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class Bench:
    wd: Workdir
    events: list[StoredEvent]  # the timed pool (batch 100 and POPO cases)
    few: list[StoredEvent]  # a smaller pool for the fsync-bound batch-1 cases
    prefill: list[StoredEvent]  # written before timing into every on-disk store
    seconds: float
    app_limit: int

    # 1. the ceiling --------------------------------------------------------------------

    def raw_lmdb(self, events: Sequence[StoredEvent], *, batch: int, index: bool) -> Result:
        """Framed appends straight into py-lmdb (plus, with ``index``, the stream index put)."""
        with self.wd.new("raw") as path:
            opts: dict[str, Any] = {
                "map_size": 1 << 30,
                "max_dbs": 4,
                "writemap": False,
                "map_async": False,
                "subdir": True,
            }
            position = 0

            def write(env: Any, chunk: Sequence[StoredEvent]) -> int:
                nonlocal position
                events_db = env.open_db(b"default.events")
                streams_db = env.open_db(b"default.events.streams")
                now = time.time_ns()
                with env.begin(write=True) as txn:
                    for e in chunk:
                        position += 1
                        pkey = position.to_bytes(8, "big")
                        oid: uuid.UUID = e.originator_id  # type: ignore[assignment]
                        body = codec.pack(
                            [0, oid.bytes, e.originator_version, e.topic, e.state, now]
                        )
                        if not txn.put(pkey, codec.frame(pkey, body), db=events_db, append=True):
                            raise RuntimeError("append out of order")
                        if index:
                            skey = (
                                b"\x00"
                                + oid.bytes
                                + (e.originator_version + (1 << 63)).to_bytes(8, "big")
                            )
                            if not txn.put(skey, pkey, db=streams_db, overwrite=False):
                                raise RuntimeError("duplicate stream key")
                return len(chunk)

            if self.prefill:
                env = lmdb.open(path, sync=False, metasync=False, **opts)
                for chunk in batches(self.prefill, PREFILL_BATCH):
                    write(env, chunk)
                env.sync(force=True)
                env.close()
            env = lmdb.open(path, sync=True, metasync=True, **opts)
            try:
                start_txn = env.info()["last_txnid"]
                result = timed(
                    batches(events, batch), lambda chunk: write(env, chunk), self.seconds
                )
                result.commits = env.info()["last_txnid"] - start_txn
                return result
            finally:
                env.close()

    # 2. xoengine's recorder -------------------------------------------------------------

    def _prefill_xo(self, path: str, prefix: str = "default") -> None:
        if not self.prefill:
            return
        store = open_store(path, durability="nosync")
        try:
            recorder = LMDBApplicationRecorder(store, prefix=prefix)
            recorder.create_table()
            for chunk in batches(self.prefill, PREFILL_BATCH):
                recorder.insert_events(chunk)
        finally:
            store.close()
        flush_file(os.path.join(path, "data.mdb"))

    def xo(self, events: Sequence[StoredEvent], *, batch: int, durability: str) -> Result:
        with self.wd.new(f"xo-{durability}-b{batch}") as path:
            self._prefill_xo(path)
            store = open_store(path, durability=durability)
            try:
                recorder = LMDBApplicationRecorder(store)
                recorder.create_table()
                start_txn = store.last_txnid()

                def write(chunk: Sequence[StoredEvent]) -> int:
                    recorder.insert_events(chunk)
                    return len(chunk)

                result = timed(batches(events, batch), write, self.seconds)
                result.commits = store.last_txnid() - start_txn
                return result
            finally:
                store.close()

    # 4. group commit --------------------------------------------------------------------

    def xo_threads(self, events: Sequence[StoredEvent], *, threads: int) -> Result:
        """``threads`` appenders, one event per call each, sharing one store (group commit)."""
        with self.wd.new(f"xo-threads{threads}") as path:
            self._prefill_xo(path)
            store = open_store(path, durability="sync")
            try:
                recorder = LMDBApplicationRecorder(store)
                recorder.create_table()
                share = len(events) // threads
                counts = [0] * threads
                stop = threading.Event()
                barrier = threading.Barrier(threads + 1)
                errors: list[BaseException] = []

                def run(k: int) -> None:
                    mine = events[k * share : (k + 1) * share]
                    barrier.wait()
                    try:
                        for e in mine:
                            if stop.is_set():
                                break
                            recorder.insert_events([e])
                            counts[k] += 1
                    except BaseException as exc:  # reported after the join
                        errors.append(exc)

                workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
                for w in workers:
                    w.start()
                gc.collect()
                start_txn = store.last_txnid()
                barrier.wait()
                start = time.perf_counter()
                # Stop at the deadline, or as soon as a worker runs out of events.
                while not stop.wait(0.005):
                    if time.perf_counter() - start >= self.seconds or not all(
                        w.is_alive() for w in workers
                    ):
                        stop.set()
                for w in workers:
                    w.join()
                elapsed = time.perf_counter() - start
                if errors:
                    raise errors[0]
                return Result(sum(counts), elapsed, store.last_txnid() - start_txn)
            finally:
                store.close()

    # 3. eventsourcing's own recorders ---------------------------------------------------------

    def sqlite(self, events: Sequence[StoredEvent], *, batch: int) -> Result:
        with self.wd.new(f"sqlite-b{batch}") as path:
            datastore = SQLiteDatastore(os.path.join(path, "events.db"))
            try:
                recorder = SQLiteApplicationRecorder(datastore)
                recorder.create_table()
                for chunk in batches(self.prefill, PREFILL_BATCH):
                    recorder.insert_events(chunk)

                def write(chunk: Sequence[StoredEvent]) -> int:
                    recorder.insert_events(chunk)
                    return len(chunk)

                return timed(batches(events, batch), write, self.seconds)
            finally:
                datastore.close()

    def popo(self, events: Sequence[StoredEvent], *, batch: int) -> Result:
        """In memory: nothing to flush, so no prefill (it would change nothing)."""
        recorder = POPOApplicationRecorder()

        def write(chunk: Sequence[StoredEvent]) -> int:
            recorder.insert_events(chunk)
            return len(chunk)

        return timed(batches(events, batch), write, self.seconds)

    # 5. the Application path -------------------------------------------------------------

    def app(self, env: dict[str, str], *, label: str) -> Result:
        """Create an aggregate, trigger one event, save (2 events per save), for ``seconds``."""
        with self.wd.new(f"app-{label}") as path:
            env = {k: v.replace("{dir}", path) for k, v in env.items()}
            module = env.get("PERSISTENCE_MODULE", "")
            if module == "xoengine.journal":
                self._prefill_xo(env["LMDB_PATH"], prefix=ReplicaApp.name.lower())
            elif module == "eventsourcing.sqlite" and self.prefill:
                datastore = SQLiteDatastore(env["SQLITE_DBNAME"])
                try:
                    recorder = SQLiteApplicationRecorder(datastore)
                    recorder.create_table()
                    for chunk in batches(self.prefill, PREFILL_BATCH):
                        recorder.insert_events(chunk)
                finally:
                    datastore.close()
            app = ReplicaApp(env=env)
            try:
                if module != "eventsourcing.popo":
                    found = app.recorder.max_notification_id() or 0  # type: ignore[attr-defined]
                    if found != len(self.prefill):
                        raise RuntimeError(f"{label}: prefill not seen by the app ({found} events)")

                def save(i: int) -> int:
                    volume = ReplicaVolume(
                        path=f"/srv/share/projects/2025/report-{i:06d}.docx", host="fileserver-03"
                    )
                    volume.write_blocks(
                        offset=i * 4096,
                        length=65536,
                        blob=(i.to_bytes(8, "big") * 4)[:25].hex(),  # JSON has no bytes
                        checksum=f"{i * 2654435761 % (1 << 64):016x}",
                    )
                    app.save(volume)
                    return 2

                return timed(range(self.app_limit), save, self.seconds)
            finally:
                app.close()


class ReplicaVolume(Aggregate):
    """A replicated file: created, then written to (the state is ~100-200 bytes per event)."""

    def __init__(self, path: str, host: str) -> None:
        self.path = path
        self.host = host
        self.writes = 0
        self.bytes_written = 0
        self.last: tuple[int, str, str] | None = None

    @event("BlocksWritten")
    def write_blocks(self, offset: int, length: int, blob: str, checksum: str) -> None:
        self.writes += 1
        self.bytes_written += length
        self.last = (offset, blob, checksum)


class ReplicaApp(Application[uuid.UUID]):
    name = "Replica"


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str
    run: Callable[[], Result]
    results: list[Result] = field(default_factory=list)

    @property
    def median(self) -> Result:
        ordered = sorted(self.results, key=lambda r: r.rate)
        return ordered[len(ordered) // 2]


def build_cases(b: Bench, events7: list[StoredEvent]) -> list[Case]:
    """The cases in run order: the two sides of each target ratio run back to back."""
    xo_env = {
        "PERSISTENCE_MODULE": "xoengine.journal",
        "LMDB_PATH": "{dir}/journal",
        "LMDB_DURABILITY": "sync",
    }
    sqlite_env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": "{dir}/app.db"}
    json_topic = "eventsourcing.persistence:JSONTranscoder"
    return [
        # Batch 100 at sync: the ceiling, xoengine, SQLite, then the reference rows.
        Case(
            "raw",
            "raw py-lmdb, framed, batch 100, sync (ceiling)",
            lambda: b.raw_lmdb(b.events, batch=100, index=False),
        ),
        Case(
            "xo_b100_sync",
            "xoengine insert_events, batch 100, sync",
            lambda: b.xo(b.events, batch=100, durability="sync"),
        ),
        Case(
            "sqlite_b100",
            "SQLite recorder (file, WAL), batch 100",
            lambda: b.sqlite(b.events, batch=100),
        ),
        Case(
            "raw_idx",
            "  ref: raw py-lmdb + stream index put, b100, sync",
            lambda: b.raw_lmdb(b.events, batch=100, index=True),
        ),
        Case(
            "xo_b100_u7",
            "  ref: xoengine b100 sync, uuid7 originators",
            lambda: b.xo(events7, batch=100, durability="sync"),
        ),
        Case(
            "sqlite_b100_u7",
            "  ref: SQLite recorder b100, uuid7 originators",
            lambda: b.sqlite(events7, batch=100),
        ),
        # Batch 1 at sync and group commit.
        Case(
            "xo_b1_sync",
            "xoengine insert_events, batch 1, sync",
            lambda: b.xo(b.few, batch=1, durability="sync"),
        ),
        Case(
            "xo_t4_sync",
            "xoengine 4 threads x 1 event/call, sync",
            lambda: b.xo_threads(b.few, threads=4),
        ),
        Case("sqlite_b1", "SQLite recorder (file, WAL), batch 1", lambda: b.sqlite(b.few, batch=1)),
        Case(
            "xo_b1_msoff",
            "  ref: xoengine b1, metasync-off (1 flush)",
            lambda: b.xo(b.few, batch=1, durability="metasync-off"),
        ),
        # The Application path, after its floor: raw py-lmdb at sync committing what
        # one save commits (2 framed events and their stream index puts).
        Case(
            "raw_b2",
            "  ref: raw py-lmdb + stream index, b2, sync (a save's floor)",
            lambda: b.raw_lmdb(b.few, batch=2, index=True),
        ),
        Case(
            "app_xo_msgpack",
            "Application save, xoengine sync, msgpack",
            lambda: b.app(xo_env, label="xo-msgpack"),
        ),
        Case(
            "app_sqlite",
            "Application save, SQLite (file, WAL)",
            lambda: b.app(sqlite_env, label="sqlite"),
        ),
        Case(
            "app_xo_json",
            "Application save, xoengine sync, JSON",
            lambda: b.app({**xo_env, "TRANSCODER_TOPIC": json_topic}, label="xo-json"),
        ),
        Case(
            "app_xo_msoff",
            "  ref: Application save, xoengine metasync-off",
            lambda: b.app({**xo_env, "LMDB_DURABILITY": "metasync-off"}, label="xo-msoff"),
        ),
        Case(
            "app_popo",
            "Application save, POPO",
            lambda: b.app({"PERSISTENCE_MODULE": "eventsourcing.popo"}, label="popo"),
        ),
        # No flush at all: what the CPU costs.
        Case(
            "xo_b100_nosync",
            "xoengine insert_events, batch 100, nosync",
            lambda: b.xo(b.events, batch=100, durability="nosync"),
        ),
        Case(
            "xo_b1_nosync",
            "xoengine insert_events, batch 1, nosync",
            lambda: b.xo(b.few, batch=1, durability="nosync"),
        ),
        Case("popo_b100", "POPO recorder, batch 100", lambda: b.popo(b.events, batch=100)),
        Case("popo_b1", "POPO recorder, batch 1", lambda: b.popo(b.events, batch=1)),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 round, 0.3 s a case, small prefill"
    )
    parser.add_argument(
        "--seconds", type=float, default=None, help="time per case per round (default 1.2)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds; the median is reported (default 3)"
    )
    parser.add_argument(
        "--prefill", type=int, default=None, help="events written before timing (default 50000)"
    )
    parser.add_argument(
        "--dir", default=None, help="where to put the temporary stores (default: system temp)"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 1.2)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    prefill_n = args.prefill if args.prefill is not None else (5_000 if args.quick else 50_000)
    pool_n = 30_000 if args.quick else 240_000

    warnings.simplefilter("ignore", DeprecationWarning)  # Application.save is deprecated in 9.5
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    events = make_events(pool_n)
    events7 = make_events(pool_n // 2, ids=uuid7)
    root = tempfile.mkdtemp(prefix="bench-journal-", dir=args.dir)
    bench = Bench(
        wd=Workdir(root),
        events=events,
        few=events[:40_000],  # batch-1 cases run at a few thousand events/s
        prefill=make_events(prefill_n, start=pool_n),
        seconds=seconds,
        app_limit=100_000,
    )
    cases = build_cases(bench, events7)
    by_key = {c.key: c for c in cases}

    print(
        f"bench_journal: Python {platform.python_version()}, py-lmdb {lmdb.__version__} "
        f"(LMDB {'.'.join(map(str, lmdb.version()))}), msgpack {'.'.join(map(str, msgpack.version))}, "
        f"{os.cpu_count()} CPUs, stores under {root}"
    )
    sizes = sorted(len(e.state) for e in events[:1000])
    print(
        f"{rounds} round(s) x {seconds:g} s per case, median round reported; prefill {prefill_n:,} events "
        f"per store; event state {sizes[0]}-{sizes[-1]} bytes, uuid4 originators",
        flush=True,
    )
    try:
        for r in range(rounds):
            for case in cases:
                case.results.append(case.run())
            print(
                f"  round {r + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'case':<52} {'events/s':>10} {'µs/event':>9} {'ev/commit':>9}   rounds (events/s)")
    for case in cases:
        m = case.median
        per_commit = f"{m.events / m.commits:.2f}" if m.commits else "-"
        spread = " ".join(f"{r.rate:,.0f}" for r in case.results)
        print(f"{case.label:<52} {m.rate:>10,.0f} {1e6 / m.rate:>9.1f} {per_commit:>9}   {spread}")
    print("(Application rows: 2 events per save, one save per commit)")

    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        """Median over rounds of a/b, each round's pair measured back to back."""
        per_round = [
            x.rate / y.rate for x, y in zip(by_key[a].results, by_key[b].results, strict=True)
        ]
        return statistics.median(per_round), per_round

    def show(text: str, value: float, per_round: list[float]) -> str:
        rounds_text = " ".join(f"{v:.2f}" for v in per_round)
        return f"{text:<48} {value:6.2f}x  (rounds {rounds_text})"

    print()
    print("Ratios (median over rounds of the ratio within each round)")
    info = [
        ("xoengine b100 sync / raw + stream index", "xo_b100_sync", "raw_idx"),
        ("raw + stream index / raw ceiling", "raw_idx", "raw"),
        ("xoengine b100 sync uuid7 / raw ceiling", "xo_b100_u7", "raw"),
        ("xoengine b100 sync uuid7 / SQLite b100 uuid7", "xo_b100_u7", "sqlite_b100_u7"),
        ("raw py-lmdb b2 sync (a save's floor) / App SQLite", "raw_b2", "app_sqlite"),
        ("Application xoengine msgpack / raw b2 floor", "app_xo_msgpack", "raw_b2"),
        ("xoengine b1 sync / SQLite b1", "xo_b1_sync", "sqlite_b1"),
        ("xoengine b1 metasync-off / sync", "xo_b1_msoff", "xo_b1_sync"),
        ("Application xoengine JSON / SQLite", "app_xo_json", "app_sqlite"),
        ("Application xoengine metasync-off / SQLite", "app_xo_msoff", "app_sqlite"),
    ]
    for text, a, b in info:
        print("  info  " + show(text, *ratio(a, b)))
    targets = [
        ("xoengine b100 sync / SQLite b100", "xo_b100_sync", "sqlite_b100", 2.5),
        ("xoengine b100 sync / raw py-lmdb ceiling", "xo_b100_sync", "raw", 0.5),
        ("4 threads x 1 event sync / 1 thread b1 sync", "xo_t4_sync", "xo_b1_sync", 3.0),
        ("Application xoengine msgpack sync / SQLite", "app_xo_msgpack", "app_sqlite", 1.3),
    ]
    met = 0
    for text, a, b, target in targets:
        value, per_round = ratio(a, b)
        ok = value >= target
        met += ok
        print(
            f"  {'PASS' if ok else 'FAIL'}  "
            + show(text, value, per_round)
            + f"  target >= {target:g}x"
        )
    print(
        f"\n{met}/{len(targets)} targets met; {time.perf_counter() - t0:.0f} s; "
        f"load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} at end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
