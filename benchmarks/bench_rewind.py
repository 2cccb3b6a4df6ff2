"""Rewind and replay throughput beside raw reads of the same bytes from the blob table, in one run.

    python benchmarks/bench_rewind.py                       # full run (~1 GiB of changes, ~2 min)
    python benchmarks/bench_rewind.py --quick               # smoke run (scaled down; < 1 minute)
    python benchmarks/bench_rewind.py --size-gib 2          # GiB of changes to journal
    python benchmarks/bench_rewind.py --durability sync     # durability of the measured phases
    python benchmarks/bench_rewind.py --small-files 0       # large files only
    python benchmarks/bench_rewind.py --profile /tmp/prof   # cProfile the timed steps

Build (always at durability ``nosync``; timed only for information): a master
tree of 4 large incompressible files under ``big/`` (64 MiB each; 16 MiB with
``--quick``) and many small files (1-32 KiB) under ``small/dirNN/``;
``create_scenario`` with one replica ``r1``, ``sc.start()``, then a rewind
point ``baseline``. Then about ``--size-gib`` of changes through many capture
cycles (``sc.capture()`` after each, ~8 MiB per cycle): aligned in-place
rewrites of random block ranges of the large files (64 KiB..4 MiB at offsets
aligned to 64 KiB), and 50 small files per cycle overwritten (new content, new
size) or appended to. ``sc.wait_replicated()`` at the end, so ``r1`` holds the
undo log for all of it.

The engine is then closed and reopened at ``--durability`` (default
``nosync``: no fsync of journal commits or of replica files; at ``sync`` a
rewind fsyncs each file it writes and each of its commits; a replay never
fsyncs its output). Before each timed step ``os.sync()`` flushes the dirty
pages of the previous one. Every byte is read from the page cache
(``drop_caches`` is refused on this machine).

Measured:

1. rewind: ``sc.rewind("r1", "baseline")``; throughput = bytes of the
   before-images undone (the lengths of every blob the undone records
   reference) per second. ``r1`` is checked against the baseline digests
   afterwards (not timed).
2. replay: ``eng.replay(scenario, to=dir, position=P)`` for P at the end and
   in the middle of the changes, and of ``big/`` only at the end; throughput =
   bytes written to the output tree (``ReplayResult.bytes``) per second, best
   of ``--repeat``. The output is checked against the master's digests at P.
3. raw reads, the references the targets are set against: ``BlobTable.view``
   (the verified read rewind and replay call: frame checksum and content id
   checked, one copy out of LMDB; ``get`` adds a second) over the same blob
   ids in the same order (for the rewind through ``UndoLog.view``: the
   before-images the journal does not hold are in the undo log's own blob
   table), taken before the rewind, which frees them; and a cursor scan of the whole ``blobs`` table
   (``store.read()`` + ``txn.items("blobs")`` + ``codec.unframe``: frame-verified
   reads; also with the content id checked as ``get`` does). Best of 3.

Two references put the figures in context (benchmark code, not xoengine's):

- floor: the same blobs read with ``blobs.view`` and ``pwrite`` to the same
  offsets, one ``open`` per piece, nothing else (in place on a copy of r1
  before the rewind; into new files for replays): the cost of moving the bytes at all.
- what-if coalesced: a rewind needs only the OLDEST before-image of each byte
  (and the oldest size), a replay only the NEWEST write of each byte still in
  the file; planned per file, each contributing blob read once, each byte
  written once, one open/ftruncate (and, above ``nosync``, one fsync) per file.
  Run on a copy of r1 / into a scratch tree and checked like the real thing.
- bounds of a replay: the fold alone (``Forensics.fold``), and the output
  tree written from memory (same files and sizes, one open and one write
  each): no replay can take less than their sum.

Ratios against the target (>= 0.5x raw) are printed as PASS/FAIL. The exit
status is 0 either way: this is a measurement, not a test. The benchmark reads
internals to know what a rewind will undo: ``sc._appliers["r1"]`` (its
``UndoLog``) and LMDB's per-table page counts.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import cProfile
import gc
import os
import platform
import pstats
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import xoengine
from xoengine import codec
from xoengine.engine import Engine
from xoengine.events import BytesWritten, ContentReplaced
from xoengine.forensic import Forensics
from xoengine.journal import BLOB_TABLE
from xoengine.tree import TMP_PREFIX, undo_blob_size

from scratch import Scratch  # benchmarks/scratch.py, beside this script

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
ALIGN = 64 * KiB
TARGET = 0.5
SCENARIO = "bench"


# -- helpers -------------------------------------------------------------------------------


def log(msg: str = "") -> None:
    print(msg, flush=True)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def mbps(nbytes: int, seconds: float) -> float:
    """MB/s (10^6 bytes per second)."""
    return nbytes / seconds / 1e6 if seconds > 0 else float("inf")


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    os.sync()
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (5 min {five:.2f}) on {os.cpu_count()} CPUs"


def environment(work: Path) -> list[str]:
    """What of the machine moves the ratios: file-system discards, free page reporting.

    Both make writing cost more than reading here, whatever the code does: a
    file system mounted with ``discard`` trims every block range a truncation
    frees, synchronously; a guest that reports free memory to its host
    (virtio-balloon free page reporting) gives back each freed 2 MiB block,
    so the next new page-cache page costs a host fault.
    """
    lines = []
    where, options = "", ""
    with contextlib.suppress(OSError), open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            inside = len(fields) > 3 and str(work.resolve()).startswith(fields[1])
            if inside and len(fields[1]) >= len(where):
                where, options = fields[1], fields[3]
    if where:
        trims = "discard (synchronous trims)" if "discard" in options.split(",") else "no discard"
        lines.append(f"file system at {where}: {trims}")
    reporting = Path("/sys/module/page_reporting/parameters")
    if reporting.is_dir():
        values = {}
        for name in ("page_reporting_order", "min_free_ms"):
            with contextlib.suppress(OSError):
                values[name] = (reporting / name).read_text().strip()
        shown = ", ".join(f"{k} {v}" for k, v in values.items())
        lines.append(f"free page reporting to the host: on ({shown}): new pages may cost a host fault")
    return lines


def tree_digests(root: Path) -> dict[str, str]:
    """relpath -> xxh3-128 of every regular file, 'dir' for directories, 'link:' + target."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames:
            out[os.path.normpath(os.path.join(rel_dir, name))] = "dir"
        for name in filenames:
            if name.startswith(TMP_PREFIX):
                continue
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
            else:
                with open(full, "rb") as f:
                    out[rel] = codec.digest128(f.read()).hex()
    return out


def compare(expected: dict[str, str], got: dict[str, str]) -> str:
    if expected == got:
        return "identical"
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    differ = sorted(p for p in set(expected) & set(got) if expected[p] != got[p])
    return (f"DIFFERENT: {len(missing)} missing {missing[:3]}, {len(extra)} extra {extra[:3]}, "
            f"{len(differ)} differ {differ[:3]}")


def file_on_disk(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_blocks * 512


def table_pages(eng: Engine, names: list[str]) -> dict[str, tuple[int, int]]:
    """table -> (entries, bytes of pages it uses) from LMDB's own statistics."""
    with eng.store.read() as txn:
        return {name: (txn.count(name), txn.page_bytes(name)) for name in names}


def blob_len(blob_id: bytes) -> int:
    return undo_blob_size(blob_id)  # an undo record's id (either table) or a journal's


# -- raw reads -------------------------------------------------------------------------------


View = Callable[[bytes], memoryview]  # a blob id's bytes: ``UndoLog.view`` or ``BlobTable.view``


def raw_get(view: View, ids: list[bytes]) -> int:
    total = 0
    for blob_id in ids:
        total += len(view(blob_id))
    return total


def raw_scan(eng: Engine, *, check_id: bool) -> tuple[int, int]:
    """Cursor scan of the blob table with frame verification; (blobs, body bytes)."""
    count = total = 0
    with eng.store.read() as txn:
        for key, value in txn.items(BLOB_TABLE):
            body = codec.unframe(key, value, where=BLOB_TABLE)
            if check_id and codec.digest128(body) != key[:16]:
                raise AssertionError(f"blob {key.hex()} does not match its id")
            count += 1
            total += len(body)
    return count, total


Write = tuple[str, int, bytes]  # (relative path, offset, blob id)


def floor_write(view: View, root: Path, writes: list[Write], *, create: bool) -> int:
    """The data-movement floor: ``view`` + one open and ``pwrite`` per piece, nothing else."""
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    made: set[Path] = set()
    total = 0
    for path, offset, blob_id in writes:
        data = view(blob_id)
        full = root / path
        if create and full.parent not in made:
            full.parent.mkdir(parents=True, exist_ok=True)
            made.add(full.parent)
        fd = os.open(full, flags, 0o600)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)
        total += len(data)
    return total


def tree_write(root: Path, files: list[tuple[str, int]], data: memoryview) -> int:
    """The tree floor of a replay: create each output file and write its final size, from memory.

    No journal, no blob, no fold: what any replay into a new tree pays at least.
    ``data`` (made before the timing: ``os.urandom`` of 64 MiB alone takes
    ~0.2 s) holds at least the largest file's size.
    """
    made: set[Path] = set()
    total = 0
    for path, size in files:
        full = root / path
        if full.parent not in made:
            full.parent.mkdir(parents=True, exist_ok=True)
            made.add(full.parent)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            total += os.pwrite(fd, data[:size], 0) if size else 0
        finally:
            os.close(fd)
    return total


def best_timed(n: int, setup: Any, fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Best of ``n`` ``timed`` runs, each after an untimed ``setup()``."""
    best: tuple[float, Any] | None = None
    for _ in range(n):
        setup()
        t, out = timed(fn, *args, **kwargs)
        if best is None or t < best[0]:
            best = (t, out)
    assert best is not None
    return best


def best_of(n: int, fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    best: tuple[float, Any] | None = None
    for _ in range(n):
        gc.collect()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        dt = time.perf_counter() - t0
        if best is None or dt < best[0]:
            best = (dt, out)
    assert best is not None
    return best


# -- profiling --------------------------------------------------------------------------------


@dataclass
class Profiler:
    directory: Path | None
    dumps: list[Path] = field(default_factory=list)

    @contextlib.contextmanager
    def run(self, name: str) -> Any:
        if self.directory is None:
            yield
            return
        prof = cProfile.Profile()
        prof.enable()
        try:
            yield
        finally:
            prof.disable()
            out = self.directory / f"{name}.pstats"
            prof.dump_stats(str(out))
            self.dumps.append(out)

    def report(self) -> None:
        for dump in self.dumps:
            log(f"\n== cProfile {dump.name} (tottime, top 18) ==")
            pstats.Stats(str(dump), stream=sys.stdout).sort_stats("tottime").print_stats(18)


# -- the workload ---------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    changes: int
    large_files: int
    large_size: int
    small_files: int
    small_per_cycle: int
    cycles: int
    durability: str
    repeat: int
    work: Path
    keep: bool
    seed: int
    profile: Path | None
    scratch: Scratch = field(init=False)


def build_baseline(cfg: Config, master: Path, rng: np.random.Generator) -> None:
    master.mkdir(parents=True)
    (master / "big").mkdir()
    for i in range(cfg.large_files):
        chunk = min(16 * MiB, cfg.large_size)
        with open(master / "big" / f"big{i}.bin", "wb") as f:
            f.writelines(rng.bytes(chunk) for _ in range(cfg.large_size // chunk))
    for i in range(cfg.small_files):
        d = master / "small" / f"dir{i % 16:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"small{i:05d}.dat").write_bytes(rng.bytes(int(rng.integers(1 * KiB, 32 * KiB))))


def change_cycle(cfg: Config, master: Path, rng: np.random.Generator, budget: int) -> int:
    """One cycle of master changes; return the bytes written (before capture)."""
    written = 0
    while written < budget:
        k = int(rng.integers(cfg.large_files))
        length = ALIGN << int(rng.integers(0, 7))  # 64 KiB .. 4 MiB
        length = min(length, cfg.large_size)
        offset = int(rng.integers(0, (cfg.large_size - length) // ALIGN + 1)) * ALIGN
        fd = os.open(master / "big" / f"big{k}.bin", os.O_WRONLY)
        try:
            os.pwrite(fd, rng.bytes(length), offset)
        finally:
            os.close(fd)
        written += length
    for _ in range(cfg.small_per_cycle):
        i = int(rng.integers(cfg.small_files))
        path = master / "small" / f"dir{i % 16:02d}" / f"small{i:05d}.dat"
        if rng.random() < 0.5:
            data = rng.bytes(int(rng.integers(1 * KiB, 32 * KiB)))
            path.write_bytes(data)  # overwrite: new content, usually a new size
        else:
            data = rng.bytes(int(rng.integers(512, 8 * KiB)))
            with open(path, "ab") as f:
                f.write(data)
        written += len(data)
    return written


@dataclass
class Built:
    point_position: int
    end_position: int
    mid_position: int
    baseline: dict[str, str]
    mid: dict[str, str]
    end: dict[str, str]
    bytes_journaled: int
    capture_events: int
    seconds: float


def build(cfg: Config, master: Path, replica: Path, state: Path) -> Built:
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    build_baseline(cfg, master, rng)
    log(f"  baseline tree: {cfg.large_files} x {fmt_bytes(cfg.large_size)} + "
        f"{cfg.small_files} small files ({time.perf_counter() - t0:.1f} s)")
    eng = Engine.open(state, durability="nosync", map_size=int(cfg.changes * 3 + 2 * GiB))
    try:
        sc = eng.create_scenario(SCENARIO, master=str(master), replicas={"r1": str(replica)})
        t1 = time.perf_counter()
        sc.start()
        point = sc.set_rewind_point("baseline")
        baseline = tree_digests(master)
        log(f"  start + initial sync + rewind point at {point.position}: "
            f"{time.perf_counter() - t1:.1f} s")
        budget = max(cfg.changes // cfg.cycles, 64 * KiB)
        journaled = events = 0
        mid_position = 0
        mid: dict[str, str] = {}
        t2 = time.perf_counter()
        cycle = 0
        while journaled < cfg.changes:
            change_cycle(cfg, master, rng, budget)
            result = sc.capture()
            journaled += result.bytes_journaled
            events += result.events
            cycle += 1
            if not mid_position and journaled >= cfg.changes // 2:
                mid_position = eng.recorder.max_notification_id() or 0
                mid = tree_digests(master)
            if cycle % 16 == 0:
                log(f"    cycle {cycle}: {fmt_bytes(journaled)} journaled, {events} events "
                    f"({time.perf_counter() - t2:.1f} s)")
        t3 = time.perf_counter()
        end_position = sc.wait_replicated()
        log(f"  {cycle} capture cycles: {fmt_bytes(journaled)} journaled in {events} events, "
            f"{t3 - t2:.1f} s; wait_replicated {time.perf_counter() - t3:.1f} s "
            f"(position {end_position})")
        end = tree_digests(master)
        check = compare(end, tree_digests(replica))
        log(f"  r1 after wait_replicated vs master: {check}")
        sc.stop()
    finally:
        eng.close()
    return Built(point.position, end_position, mid_position, baseline, mid, end, journaled,
                 events, time.perf_counter() - t0)


# -- measured phases ------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    nbytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return mbps(self.nbytes, self.seconds)


@dataclass
class UndoPlan:
    records: int
    ops: dict[str, int]
    nbytes: int
    ids: list[bytes]  # in the order a rewind reads them
    writes: list[Write]  # where a rewind puts them (content ops: offset in the rebuilt file)
    records_list: list[Any] = field(default_factory=list)  # UndoRecords, newest first


def undo_plan(sc: Any, target: int) -> UndoPlan:
    """What rewinding r1 to ``target`` will undo."""
    applier = sc._appliers["r1"]
    applied = applier.position()
    records = applier.undo.records(after=target, upto=applied, reverse=True)
    writes: list[Write] = []
    ops: dict[str, int] = {}
    for record in records:
        args = record.args
        ops[record.op] = ops.get(record.op, 0) + 1
        if record.op == "bytes":
            writes += [(record.path, offset, args[name]) for offset, name in args.get("spans", [])]
        elif record.op in {"deleted", "replaced"}:
            cursor = 0
            for name in args.get("chunks", ["content"] if "content" in args else []):
                writes.append((record.path, cursor, args[name]))
                cursor += blob_len(args[name])
        elif record.op == "content":
            cursor = 0
            for op in args["ops"]:
                if op[0] == "data":
                    writes.append((record.path, cursor, args[op[1]]))
                cursor += op[2]
    ids = [w[2] for w in writes]
    return UndoPlan(len(records), ops, sum(blob_len(i) for i in ids), ids, writes, records)


def under(path: str, prefix: str | None) -> bool:
    return prefix is None or path == prefix or path.startswith(prefix + "/")


def replay_writes(eng: Engine, position: int, prefix: str | None) -> list[Write]:
    """The pieces a replay at ``position`` (of ``prefix``) reads and writes, in its order."""
    alive = Forensics(eng, SCENARIO).fold(position)
    writes: list[Write] = []
    files = [f for f in alive.values() if f.kind == "file" and under(f.path, prefix)]
    for live in sorted(files, key=lambda f: (f.path.count("/"), os.fsencode(f.path))):
        for _, event in live.content:
            if isinstance(event, BytesWritten):
                writes += [(live.path, r[0], r[2]) for r in event.ranges]
            elif isinstance(event, ContentReplaced):
                cursor = 0
                for op in event.ops:
                    if op[0] == "data":
                        writes.append((live.path, cursor, op[1]))
                    cursor += op[2]
    return writes


# -- what-if: coalesced rewind and replay (reference code, not xoengine's) --------------------
#
# Rewinding (target, applied] needs, for every byte, only the OLDEST before-image that
# covers it (and the oldest recorded size); a replay at P needs only the NEWEST write that
# covers each byte (and the size at P). Writing each byte once, and reading only the blobs
# that still contribute a byte, is what a coalescing rewind/replay would do. These
# functions plan and run that, on a copy of r1 / into a scratch tree, and the result is
# checked against the same digests as the real thing.

Piece = tuple[int, bytes, int, int]  # (file offset, blob id, offset in blob, length)


class Coverage:
    """Sorted disjoint byte intervals [start, end) already decided."""

    def __init__(self) -> None:
        self.spans: list[tuple[int, int]] = []

    def claim(self, start: int, end: int) -> list[tuple[int, int]]:
        """Mark [start, end) decided; return its parts that were not decided yet."""
        if end <= start:
            return []
        free: list[tuple[int, int]] = []
        cursor = start
        index = max(bisect.bisect_right(self.spans, (start, start)) - 1, 0)
        for s, e in self.spans[index:]:
            if s >= end:
                break
            if e <= cursor:
                continue
            if s > cursor:
                free.append((cursor, s))
            cursor = max(cursor, e)
            if cursor >= end:
                break
        if cursor < end:
            free.append((cursor, end))
        if free:
            merged: list[tuple[int, int]] = []
            for s, e in sorted([*self.spans, *free]):
                if merged and s <= merged[-1][1]:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], e))
                else:
                    merged.append((s, e))
            self.spans = merged
        return free


@dataclass
class FilePlan:
    size: int | None = None
    pieces: list[Piece] = field(default_factory=list)
    coverage: Coverage = field(default_factory=Coverage)
    ok: bool = True

    def put(self, offset: int, blob_id: bytes, limit: int | None = None) -> None:
        end = offset + blob_len(blob_id)
        if limit is not None:
            end = min(end, limit)
        for s, e in self.coverage.claim(offset, end):
            self.pieces.append((s, blob_id, s - offset, e - s))


def plan_coalesced_rewind(records: list[Any]) -> dict[str, FilePlan]:
    """Per path: the oldest before-image of every byte and the oldest size (None: not coalescible)."""
    plans: dict[str, FilePlan] = {}
    for record in reversed(records):  # oldest first: the first claim of a byte wins
        plan = plans.setdefault(record.path, FilePlan())
        args = record.args
        if record.op == "bytes":
            if plan.size is None:
                plan.size = args["old_size"]
            for offset, name in args.get("spans", []):
                plan.put(offset, args[name])
        elif record.op == "content":
            if plan.size is None:
                plan.size = args["old_size"]
            cursor = 0
            for op in args["ops"]:
                if op[0] == "data":
                    plan.put(cursor, args[op[1]])
                elif op[1] != cursor:
                    plan.ok = False  # a shifted copy: not an extent map any more
                cursor += op[2]
        else:
            plan.ok = False
    return plans


def plan_coalesced_replay(eng: Engine, position: int, prefix: str | None) -> dict[str, FilePlan]:
    """Per live file at ``position``: the newest write of every byte still inside the file."""
    alive = Forensics(eng, SCENARIO).fold(position)
    plans: dict[str, FilePlan] = {}
    for live in alive.values():
        if live.kind != "file" or not under(live.path, prefix):
            continue
        plan = plans.setdefault(live.path, FilePlan(size=live.size))
        limit = live.size  # bytes at or past the smallest later size were cut off
        for _, event in reversed(live.content):  # newest first: the first claim wins
            size = getattr(event, "size", None)
            if isinstance(event, BytesWritten):
                lim = min(limit, event.size)
                for offset, _, blob_id in event.ranges:
                    plan.put(offset, blob_id, lim)
            elif isinstance(event, ContentReplaced):
                lim = min(limit, event.size)
                cursor = 0
                for op in event.ops:
                    if op[0] == "data":
                        plan.put(cursor, op[1], lim)
                    elif op[1] != cursor:
                        plan.ok = False
                    cursor += op[2]
            else:
                plan.ok = False  # a truncation: fine in principle, not modelled here
            if isinstance(size, int):
                limit = min(limit, size)
    return plans


def run_coalesced(
    view: View, root: Path, plans: dict[str, FilePlan], *, create: bool, fsync: bool = False
) -> tuple[int, int]:
    """Write every plan's pieces (each blob read once), set sizes, fsync each file once if asked.

    Returns (blobs read, bytes written).
    """
    by_blob: dict[bytes, list[tuple[str, int, int, int]]] = {}
    for path, plan in plans.items():
        for offset, blob_id, start, length in plan.pieces:
            by_blob.setdefault(blob_id, []).append((path, offset, start, length))
    fds: dict[str, int] = {}
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if create else 0)

    def fd_of(path: str) -> int:
        fd = fds.get(path)
        if fd is None:
            full = root / path
            if create:
                full.parent.mkdir(parents=True, exist_ok=True)
            fd = fds[path] = os.open(full, flags, 0o600)
        return fd

    written = 0
    try:
        for blob_id, uses in by_blob.items():
            data = view(blob_id)
            for path, offset, start, length in uses:
                written += os.pwrite(fd_of(path), data[start : start + length], offset)
        for path, plan in plans.items():
            if plan.size is not None:
                fd = fd_of(path)
                if os.fstat(fd).st_size != plan.size:
                    os.ftruncate(fd, plan.size)
        if fsync:
            for fd in fds.values():
                os.fsync(fd)
    finally:
        for fd in fds.values():
            os.close(fd)
    return len(by_blob), written


def whatif_rewind(
    view: View, root: Path, records: list[Any], *, fsync: bool
) -> tuple[int, int, int]:
    """Plan and run a coalesced rewind on ``root``; (blobs read, bytes written, paths not coalescible)."""
    plans = plan_coalesced_rewind(records)
    bad = sum(1 for p in plans.values() if not p.ok)
    nblobs, written = run_coalesced(view, root, plans, create=False, fsync=fsync)
    return nblobs, written, bad


def whatif_replay(
    eng: Engine, root: Path, position: int, prefix: str | None
) -> tuple[int, int, int]:
    """Plan (fold included) and run a coalesced replay into ``root``; same triple."""
    plans = plan_coalesced_replay(eng, position, prefix)
    bad = sum(1 for p in plans.values() if not p.ok)
    nblobs, written = run_coalesced(eng.blobs.view, root, plans, create=True)
    return nblobs, written, bad


def verdict(r: float) -> str:
    return "PASS" if r >= TARGET else "FAIL"


def ratio_lines(label: str, row: Row, refs: list[Row]) -> list[tuple[str, float]]:
    return [(f"{label} / {ref.what}", row.rate / ref.rate) for ref in refs]


def measure(cfg: Config, built: Built, replica: Path, state: Path, prof: Profiler) -> list[str]:
    summary: list[str] = []
    eng = Engine.open(state, durability=cfg.durability)
    try:
        sc = eng.scenario(SCENARIO)
        undo = sc._appliers["r1"].undo

        # -- sizes -----------------------------------------------------------------------
        plan = undo_plan(sc, built.point_position)
        undo_count, undo_frames = undo.size()
        unique_undo = {i: blob_len(i) for i in plan.ids}
        journal_ids: set[bytes] = set()
        for _, _, event in eng.file_events(SCENARIO, None):
            if isinstance(event, BytesWritten):
                journal_ids.update(r[2] for r in event.ranges)
            elif isinstance(event, ContentReplaced):
                journal_ids.update(op[1] for op in event.ops if op[0] == "data")
        shared = sum(n for i, n in unique_undo.items() if i in journal_ids)
        pages = table_pages(
            eng, [BLOB_TABLE, undo.own.table, undo.table, eng.recorder.events_table]
        )
        data_mdb = state / "journal" / "data.mdb"
        apparent, allocated = file_on_disk(data_mdb)
        log("\nSizes")
        log(f"  changes journaled: {fmt_bytes(built.bytes_journaled)} in "
            f"{built.capture_events} events")
        log(f"  undo log of r1: {undo_count} records in all ({plan.records} after the rewind "
            f"point), frames {fmt_bytes(undo_frames)}, table pages "
            f"{fmt_bytes(pages.get(undo.table, (0, 0))[1])}")
        log(f"  before-images after the rewind point: {fmt_bytes(plan.nbytes)} in "
            f"{len(plan.ids)} blobs ({len(unique_undo)} distinct, "
            f"{fmt_bytes(sum(unique_undo.values()))}; {fmt_bytes(shared)} of them are also "
            f"blobs of journaled writes, stored once)")
        log(f"  journal data.mdb: {fmt_bytes(apparent)} apparent, {fmt_bytes(allocated)} on disk")
        for table, (entries, nbytes) in pages.items():
            log(f"    {table}: {entries} entries, {fmt_bytes(nbytes)} of pages")
        summary.append(f"undo log: {plan.records} records / {fmt_bytes(plan.nbytes)} of "
                       f"before-images to undo; journal on disk {fmt_bytes(allocated)}")

        # -- rewind ----------------------------------------------------------------------
        log(f"\nRewind r1 to 'baseline' (position {built.point_position}), "
            f"durability {cfg.durability}")
        raw_u_t, _ = best_of(3, raw_get, undo.view, plan.ids)
        # What-if first, on a copy of r1 as it is now (the rewind consumes the undo log).
        copy = cfg.work / "r1-whatif"

        def fresh_copy() -> None:
            cfg.scratch.discard(copy)
            shutil.copytree(replica, copy, symlinks=True)

        t_co, (co_blobs, co_written, co_bad) = best_timed(
            cfg.repeat, fresh_copy, whatif_rewind, undo.view, copy, plan.records_list,
            fsync=cfg.durability != "nosync",
        )
        co_check = compare(built.baseline, tree_digests(copy))
        # Reference only: the same before-images put back in rewind order, in place on a
        # copy of r1 (the rewind frees the blobs only its records held: it goes last).
        t_floor, _ = best_timed(
            cfg.repeat, fresh_copy, floor_write, undo.view, copy, plan.writes, create=False
        )
        cfg.scratch.discard(copy)
        coalesced_u = Row("what-if coalesced", plan.nbytes, t_co)
        with prof.run("rewind"):
            t_rewind, _ = timed(sc.rewind, "r1", "baseline")
        rewind = Row("rewind", plan.nbytes, t_rewind)
        raw_u = Row("raw get (same ids)", plan.nbytes, raw_u_t)
        check = compare(built.baseline, tree_digests(replica))
        floor_u = Row("floor get+pwrite", plan.nbytes, t_floor)
        ops = ", ".join(f"{op} {n}" for op, n in sorted(plan.ops.items()))
        log(f"  {plan.records} undo records ({ops}), {len(plan.ids)} blob reads, "
            f"{fmt_bytes(plan.nbytes)} of before-images")
        log(f"  sc.rewind:                          {t_rewind:7.3f} s  {rewind.rate:8.0f} MB/s")
        log(f"  raw UndoLog.view (same ids):        {raw_u.seconds:7.3f} s  {raw_u.rate:8.0f} MB/s")
        log(f"  floor: get + open + pwrite in place: {t_floor:6.3f} s  {floor_u.rate:8.0f} MB/s")
        log(f"  r1 after rewind vs baseline: {check}")
        fsynced = ", one fsync per file" if cfg.durability != "nosync" else ""
        log(f"  what-if coalesced rewind (reference code on a copy of r1{fsynced}): {t_co:.3f} s, "
            f"{coalesced_u.rate:.0f} MB/s of before-images undone; read {co_blobs} blobs, wrote "
            f"{fmt_bytes(co_written)}, {co_bad} paths not coalescible; vs baseline: {co_check}")

        # -- raw scan ----------------------------------------------------------------------
        t_scan, (n_scan, b_scan) = best_of(3, raw_scan, eng, check_id=False)
        t_scan_id, _ = best_of(3, raw_scan, eng, check_id=True)
        scan = Row("raw scan (unframe)", b_scan, t_scan)
        scan_id = Row("raw scan (unframe + id)", b_scan, t_scan_id)
        log(f"\nRaw cursor scan of the blob table: {n_scan} blobs, {fmt_bytes(b_scan)}")
        log(f"  unframe:                            {t_scan:7.3f} s  {scan.rate:8.0f} MB/s")
        log(f"  unframe + content-id digest:        {t_scan_id:7.3f} s  {scan_id.rate:8.0f} MB/s")

        # -- replay ----------------------------------------------------------------------
        # Outputs are kept until every replay is done: deleting GiBs between timed runs
        # (ext4 here is mounted with discard) would bill one run for the last one's cleanup.
        replays: list[tuple[str, Row, Row, Row, Row]] = []
        outputs: list[Path] = []
        try:
            big = {k: v for k, v in built.end.items() if under(k, "big")}
            for label, position, expected, prefix in (
                ("end", built.end_position, built.end, None),
                ("middle", built.mid_position, built.mid, None),
                ("end, big/", built.end_position, big, "big"),
            ):
                writes = replay_writes(eng, position, prefix)
                ids = [w[2] for w in writes]
                id_bytes = sum(blob_len(i) for i in ids)
                best: tuple[float, Any] | None = None
                checks = []
                for run in range(cfg.repeat):
                    out = cfg.work / f"replay-{label.replace(', ', '-').rstrip('/')}-{run}"
                    outputs.append(out)
                    name = f"replay-{label.replace(', ', '-').rstrip('/')}"
                    with prof.run(name) if run == 0 else contextlib.nullcontext():
                        t, result = timed(
                            eng.replay, SCENARIO, to=str(out), position=position, path=prefix
                        )
                    checks.append(compare(expected, tree_digests(out)))
                    tree_bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
                    if best is None or t < best[0]:
                        best = (t, result)
                assert best is not None
                t_replay, result = best
                t_raw_r, _ = best_of(3, raw_get, eng.blobs.view, ids)
                floor_dir = cfg.work / f"floor-{len(outputs)}"
                outputs.append(floor_dir)
                t_floor_r, _ = best_timed(
                    cfg.repeat, lambda d=floor_dir: cfg.scratch.discard(d),
                    floor_write, eng.blobs.view, floor_dir, writes, create=True,
                )
                co_dir = cfg.work / f"coalesced-{len(outputs)}"
                outputs.append(co_dir)
                t_co_r, (co_blobs_r, co_written_r, co_bad_r) = best_timed(
                    cfg.repeat, lambda d=co_dir: cfg.scratch.discard(d),
                    whatif_replay, eng, co_dir, position, prefix,
                )
                co_check_r = compare(expected, tree_digests(co_dir))
                # Bounds on any replay: the fold alone, and writing the final tree alone.
                t_fold, _ = best_of(cfg.repeat, Forensics(eng, SCENARIO).fold, position)
                tree_files = [(str(f.relative_to(out)), f.stat().st_size)
                              for f in sorted(out.rglob("*")) if f.is_file()]
                tw_dir = cfg.work / f"treewrite-{len(outputs)}"
                outputs.append(tw_dir)
                source = memoryview(os.urandom(max((n for _, n in tree_files), default=0)))
                t_tree, _ = best_timed(
                    cfg.repeat, lambda d=tw_dir: cfg.scratch.discard(d),
                    tree_write, tw_dir, tree_files, source,
                )
                row = Row(f"replay {label}", result.bytes, t_replay)
                coalesced_r = Row("what-if coalesced", id_bytes, t_co_r)
                raw_r = Row("raw get (same ids)", id_bytes, t_raw_r)
                floor_r = Row("floor get+pwrite", id_bytes, t_floor_r)
                log(f"\nReplay at {label} (position {position}): {result.files} files, "
                    f"{fmt_bytes(result.bytes)} written, {len(ids)} blob reads "
                    f"({fmt_bytes(id_bytes)})")
                log(f"  eng.replay:                         {t_replay:7.3f} s  {row.rate:8.0f} MB/s"
                    f"  (best of {cfg.repeat})")
                log(f"  raw BlobTable.view (same ids):      {t_raw_r:7.3f} s  {raw_r.rate:8.0f} MB/s")
                log(f"  floor: get + open + pwrite, new files: {t_floor_r:4.3f} s  "
                    f"{floor_r.rate:8.0f} MB/s")
                log(f"  output tree {fmt_bytes(tree_bytes)}: {mbps(tree_bytes, t_replay):.0f} MB/s of "
                    f"final tree; vs master at that position: {'; '.join(sorted(set(checks)))}")
                log(f"  what-if coalesced replay (reference code): {t_co_r:.3f} s, "
                    f"{coalesced_r.rate:.0f} MB/s of replayed bytes; read {co_blobs_r} blobs, "
                    f"wrote {fmt_bytes(co_written_r)}, {co_bad_r} files not coalescible; "
                    f"vs master: {co_check_r}")
                log(f"  bounds: fold alone {t_fold:.3f} s; output tree written from memory "
                    f"({len(tree_files)} files) {t_tree:.3f} s; sum {t_fold + t_tree:.3f} s = "
                    f"{t_raw_r / (t_fold + t_tree):.2f}x of raw get at best")
                replays.append((label, row, raw_r, floor_r, coalesced_r))
        finally:
            for out in outputs:
                cfg.scratch.discard(out)

        # -- ratios ----------------------------------------------------------------------
        log(f"\nRatios (target >= {TARGET}x raw), measured at durability {cfg.durability}")
        lines = ratio_lines("rewind", rewind, [raw_u, scan, scan_id])
        floors = [("rewind / floor get+pwrite", rewind.rate / floor_u.rate)]
        whatifs = [("what-if coalesced rewind / raw get", coalesced_u.rate / raw_u.rate)]
        for label, row, raw_r, floor_r, coalesced_r in replays:
            lines += ratio_lines(f"replay {label}", row, [raw_r, scan, scan_id])
            floors.append((f"replay {label} / floor get+pwrite", row.rate / floor_r.rate))
            whatifs.append((f"what-if coalesced replay {label} / raw get",
                            coalesced_r.rate / raw_r.rate))
        for label, r in lines:
            log(f"  {label:44s} {r:5.2f}x  {verdict(r)}")
        log("  reference: the same bytes read and written with nothing else done")
        for label, r in floors:
            log(f"  {label:44s} {r:5.2f}x")
        log("  reference: coalesced (each byte written once, contributing blobs read once)")
        for label, r in whatifs:
            log(f"  {label:44s} {r:5.2f}x  {verdict(r)}")
        summary.append(f"rewind {rewind.rate:.0f} MB/s; raw get {raw_u.rate:.0f} MB/s -> "
                       f"{rewind.rate / raw_u.rate:.2f}x {verdict(rewind.rate / raw_u.rate)}; "
                       f"floor {floor_u.rate:.0f} MB/s; what-if coalesced {coalesced_u.rate:.0f} MB/s")
        for label, row, raw_r, floor_r, coalesced_r in replays:
            summary.append(f"replay {label} {row.rate:.0f} MB/s; raw get {raw_r.rate:.0f} MB/s "
                           f"-> {row.rate / raw_r.rate:.2f}x {verdict(row.rate / raw_r.rate)}; "
                           f"floor {floor_r.rate:.0f} MB/s; what-if coalesced "
                           f"{coalesced_r.rate:.0f} MB/s")
        summary.append(f"raw scan {scan.rate:.0f} MB/s (unframe), {scan_id.rate:.0f} MB/s "
                       "(+ id digest)")
    finally:
        eng.close()
    return summary


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down smoke run (< 1 min)")
    parser.add_argument("--size-gib", type=float, default=None,
                        help="GiB of changes to journal (default 1; --quick 1/16)")
    parser.add_argument("--durability", default="nosync",
                        choices=("nosync", "metasync-off", "sync"),
                        help="durability of the measured phases (the build is always nosync)")
    parser.add_argument("--repeat", type=int, default=0,
                        help="replay runs per position, best reported (default 2; --quick 1)")
    parser.add_argument("--work", default="/tmp/xoengine-bench-rewind", help="scratch directory")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--seed", type=int, default=20250101)
    parser.add_argument("--small-files", type=int, default=None,
                        help="small files in the tree (default 2000; --quick 500); 0: large only")
    parser.add_argument("--profile", default=None,
                        help="directory for cProfile dumps of rewind and the first replays "
                        "(profiled timings are inflated)")
    args = parser.parse_args()
    size_gib = args.size_gib if args.size_gib is not None else (1 / 16 if args.quick else 1.0)
    small_files = args.small_files if args.small_files is not None else (
        500 if args.quick else 2000
    )
    cfg = Config(
        quick=args.quick,
        changes=int(size_gib * GiB),
        large_files=4,
        large_size=(16 if args.quick else 64) * MiB,
        small_files=small_files,
        small_per_cycle=(20 if args.quick else 50) if small_files else 0,
        cycles=32 if args.quick else 128,
        durability=args.durability,
        repeat=args.repeat or (1 if args.quick else 2),
        work=Path(args.work),
        keep=args.keep,
        seed=args.seed,
        profile=Path(args.profile) if args.profile else None,
    )
    if cfg.profile:
        cfg.profile.mkdir(parents=True, exist_ok=True)
    cfg.scratch = Scratch(cfg.work)  # nothing deleted until the end: see benchmarks/scratch.py
    master, replica, state = cfg.work / "master", cfg.work / "r1", cfg.work / "state"
    log(f"bench_rewind: xoengine {getattr(xoengine, '__version__', '?')}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}")
    log(f"  {' '.join(sys.argv)}")
    log(f"  load {load()}; build at nosync, measured phases at {cfg.durability}")
    for line in environment(cfg.work):
        log(f"  {line}")
    started = time.perf_counter()
    prof = Profiler(cfg.profile)
    try:
        log("\nBuild")
        built = build(cfg, master, replica, state)
        log(f"  build total {built.seconds:.1f} s")
        summary = measure(cfg, built, replica, state, prof)
    finally:
        cfg.scratch.empty(keep_work=cfg.keep)
    log(f"\nSummary ({cfg.durability}; load {load()}; total {time.perf_counter() - started:.0f} s)")
    for line in summary:
        log(f"  {line}")
    prof.report()


if __name__ == "__main__":
    main()
