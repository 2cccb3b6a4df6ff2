"""Synchronization and replication: xoengine beside rsync, in one run.

    python benchmarks/bench_sync.py               # full run (1 GiB cases; a few minutes)
    python benchmarks/bench_sync.py --quick       # smoke run (scaled down; under a minute)
    python benchmarks/bench_sync.py --size-gib 2  # size of cases (a) and (b)
    python benchmarks/bench_sync.py --rounds 5 --profile /tmp/prof  # medians of 5; cProfile

Cases (each gets a fresh state directory and fresh replica directories under
``--work``; test data is generated once, incompressible, and cached under
``--cache``):

a. initial synchronization of a mixed tree (~1,000 files, 1 GiB: many small
   files, some 10-50 MiB) into an empty replica: ``Engine.open`` +
   ``create_scenario`` + ``sc.start()`` (captures the baseline into the
   journal and synchronizes the replica) at durability ``sync`` and
   ``nosync``, beside ``rsync -a src/ dst/``; plus a phase split (``capture()``
   then ``synchronize()``) and the journal's size on disk;
b. a 1 GiB file with 1% of its 4 KiB blocks rewritten in place:
   ``sc.capture()`` + ``sc.wait_replicated()`` and the bytes journaled, beside
   ``rsync --no-whole-file --inplace -B 4096`` and its literal data;
c. 100 bytes inserted at offset 0 of a 64 MiB file: bytes journaled and time,
   beside ``rsync --no-whole-file`` (default block size) and its literal data;
d. an unchanged 10,000-file tree: a capture pass that finds nothing, beside
   rsync's no-change pass over an identical destination;
e. lag from a write (``sc.open(path, "r+b")``, a few hundred bytes, journaled
   at close) to the replica showing the bytes: one write at a time, and a
   steady paced stream, p50/p99.

Page cache: ``drop_caches`` is refused on this machine, so both tools read
their sources from the page cache; every source is read once before either
tool is timed, and ``os.sync()`` runs before each timed step so that neither
pays for the other's dirty pages. rsync writes without fsync; xoengine at
``sync`` fsyncs the journal and the replica files (``nosync`` does neither):
the ``rsync + sync`` reference rows add a final ``sync`` to rsync's time.

rsync is installed with apt-get if it is missing (as root); if that fails,
only xoengine's figures are printed. The exit status is 0 either way: this is
a measurement, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import math
import os
import platform
import pstats
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

import xoengine
from xoengine.engine import Engine
from xoengine.journal import encode_position

from scratch import Scratch  # benchmarks/scratch.py, beside this script

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
BLOCK = 4096


# -- helpers -------------------------------------------------------------------------------


def log(msg: str = "") -> None:
    print(msg, flush=True)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def fmt_s(t: float | None) -> str:
    if t is None:
        return "-"
    if t < 0.01:
        return f"{t * 1000:.2f} ms"
    return f"{t:.3f} s"


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


SCRATCH: Scratch | None = None  # set by main(): see benchmarks/scratch.py


def rmtree(path: Path) -> None:
    """Remove ``path``: inside the work directory, moved to its trash (no inode freed mid-run)."""
    if SCRATCH is not None and path.is_relative_to(SCRATCH.work):
        SCRATCH.discard(path)
    elif path.exists():
        shutil.rmtree(path)


def dir_bytes_on_disk(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def warm(path: Path) -> int:
    """Read every regular file under ``path`` once (page cache); return bytes read."""
    total = 0
    buf = bytearray(8 * MiB)
    view = memoryview(buf)
    paths = [path] if path.is_file() else [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total


def same_tree(a: Path, b: Path) -> bool:
    r = subprocess.run(
        ["diff", "-rq", "--no-dereference", str(a), str(b)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        log(f"    !! trees differ: {r.stdout[:300]}{r.stderr[:300]}")
    return r.returncode == 0


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    os.sync()
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def load() -> str:
    """The 1-minute load average: the machine may be shared; figures under load are noisy."""
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (5 min {five:.2f}) on {os.cpu_count()} CPUs"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# -- rsync -----------------------------------------------------------------------------------


def ensure_rsync() -> str | None:
    found = shutil.which("rsync")
    if found:
        return found
    log("rsync is not installed.")
    if os.geteuid() != 0:
        log("  not root: cannot install it; reporting xoengine-only figures.")
        return None
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "rsync"]):
        log(f"  running: {' '.join(cmd)}")
        try:
            r = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log(f"  failed: {e}; reporting xoengine-only figures.")
            return None
        tail = (r.stdout + r.stderr).strip().splitlines()[-3:]
        for line in tail:
            log(f"    | {line}")
        if r.returncode != 0:
            log(f"  exit status {r.returncode}; reporting xoengine-only figures.")
            return None
    found = shutil.which("rsync")
    if found:
        ver = subprocess.run([found, "--version"], capture_output=True, text=True, check=False)
        log(f"  installed: {ver.stdout.splitlines()[0] if ver.stdout else found}")
    return found


def run_rsync(rsync: str, args: list[str]) -> tuple[float, dict[str, int]]:
    """Run rsync (after os.sync()); return wall time and parsed --stats figures."""
    os.sync()
    t0 = time.perf_counter()
    r = subprocess.run([rsync, *args], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"rsync {' '.join(args)} failed: {r.stderr[:500]}")
    stats: dict[str, int] = {}
    for key in (
        "Literal data",
        "Matched data",
        "Total bytes sent",
        "Total bytes received",
        "Number of regular files transferred",
    ):
        m = re.search(rf"{key}: ([\d,.]+)", r.stdout)
        if m:
            stats[key] = int(m.group(1).replace(",", "").split(".")[0])
    return elapsed, stats


# -- test data (generated once, cached) -----------------------------------------------------


def random_bytes(rng: np.random.Generator, n: int) -> bytes:
    words = rng.bit_generator.random_raw(-(-n // 8))
    return words.tobytes()[:n]


def write_random(path: Path, size: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 16 * MiB)
            f.write(random_bytes(rng, n))
            left -= n


def mixed_sizes(total: int, count: int, seed: int) -> list[int]:
    """~count sizes summing to total: 90% small (100 B-64 KiB), ~7% medium, ~3% large."""
    rnd = random.Random(seed)
    scale = total / GiB
    lo, hi = int(10 * MiB * scale), int(50 * MiB * scale)
    large: list[int] = []
    while sum(large) < 0.75 * total:
        large.append(rnd.randint(lo, hi))
    large[-1] -= sum(large) - int(0.75 * total)
    n_small = int(count * 0.9)
    small = [int(math.exp(rnd.uniform(math.log(100), math.log(64 * KiB)))) for _ in range(n_small)]
    n_med = max(1, count - n_small - len(large))
    rest = total - sum(large) - sum(small)
    weights = [rnd.uniform(0.2, 1.0) for _ in range(n_med)]
    medium = [int(rest * w / sum(weights)) for w in weights]
    medium[-1] += total - sum(large) - sum(small) - sum(medium)
    sizes = large + small + medium
    rnd.shuffle(sizes)
    return sizes


def cached(cache: Path, key: str, build: Any) -> Path:
    path = cache / key
    done = cache / f"{key}.done"
    if done.exists() and path.exists():
        return path
    rmtree(path)
    log(f"  generating {path} ...")
    t0 = time.perf_counter()
    build(path)
    os.sync()
    done.write_text("ok\n")
    log(f"  generated in {time.perf_counter() - t0:.1f} s")
    return path


def build_mixed(path: Path, total: int, count: int) -> None:
    rng = np.random.default_rng(1)
    for i, size in enumerate(mixed_sizes(total, count, seed=1)):
        d = path / f"d{i % 40:02d}" / f"s{(i // 40) % 5}"
        write_random(d / f"f{i:05d}.bin", size, rng)


def build_one(path: Path, size: int, seed: int) -> None:
    path.mkdir(parents=True)
    write_random(path / "big.bin", size, np.random.default_rng(seed))


def build_small_tree(path: Path, count: int) -> None:
    rng = np.random.default_rng(3)
    rnd = random.Random(3)
    per_dir = 100
    for i in range(count):
        d = path / f"g{i // (per_dir * 10):02d}" / f"d{(i // per_dir) % 10}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"n{i:06d}.txt").write_bytes(random_bytes(rng, rnd.randint(200, 4096)))


# -- results -------------------------------------------------------------------------------


@dataclass
class Target:
    case: str
    what: str
    value: float | None
    limit: float
    unit: str  # "x" (ratio) or "B"

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "n/a"
        return "PASS" if self.value <= self.limit else "FAIL"

    def shown(self, v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}x" if self.unit == "x" else fmt_bytes(v)


@dataclass
class Report:
    rows: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def row(self, case: str, what: str, xo: str, rs: str = "-", r: str = "-") -> None:
        self.rows.append((case, what, xo, rs, r))
        log(f"  {what:<52} xoengine {xo:>14}   rsync {rs:>14}   ratio {r:>7}")


# -- the cases -------------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    size: int
    mixed_files: int
    insert_size: int
    small_files: int
    lag_writes: int
    lag_rate: float
    d_rounds: int
    rounds: int
    work: Path
    cache: Path
    profile: Path | None


def open_scenario(state: Path, master: Path, replica: Path, durability: str) -> tuple[Engine, Any]:
    eng = Engine.open(state, durability=durability)
    sc = eng.create_scenario("bench", master=str(master), replicas={"r1": str(replica)})
    return eng, sc


def event_record_bytes(eng: Engine, positions: list[int]) -> int:
    """Stored size of the event records at ``positions`` (blobs are counted apart)."""
    total = 0
    with eng.store.read() as txn:
        for p in positions:
            value = txn.get(eng.recorder.events_table, encode_position(p))
            total += len(value) if value is not None else 0
    return total


def journal_on_disk(state: Path) -> tuple[int, int]:
    """(allocated bytes, apparent size) of the LMDB files under the state dir."""
    allocated = apparent = 0
    for p in state.rglob("*.mdb"):
        st = p.stat()
        allocated += st.st_blocks * 512
        apparent += st.st_size
    return allocated, apparent


def med(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return ", ".join(fmt_s(v) for v in values)


# -- physical bounds for case a (same bytes, same disk, same run) -----------------------------


def _tree_files(src: Path) -> list[Path]:
    return sorted(Path(d) / f for d, _, fs in os.walk(src) for f in fs)


def bound_plain_write(work: Path, size: int) -> None:
    """Python writes of ``size`` bytes to one new file from a reused buffer, then fsync."""
    work.mkdir(parents=True, exist_ok=True)
    buf = memoryview(random_bytes(np.random.default_rng(21), 4 * MiB))
    path = work / "plain.bin"
    with open(path, "wb", buffering=0) as f:
        left = size
        while left:
            n = min(left, len(buf))
            f.write(buf[:n])
            left -= n
        os.fsync(f.fileno())
    path.unlink()


def bound_copy_tree(src: Path, dst: Path, files: list[Path]) -> None:
    """Every file copied with copy_file_range (no per-file fsync), then one sync."""
    for source in files:
        target = dst / source.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        fi = os.open(source, os.O_RDONLY)
        fo = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while os.copy_file_range(fi, fo, 1 << 30):
                pass
        finally:
            os.close(fi)
            os.close(fo)
    os.sync()


def bound_lmdb_blobs(path: Path, files: list[Path]) -> None:
    """Raw py-lmdb at sync=True, metasync=True: the tree's bytes as 4 MiB values (read
    through one reused buffer), 64 MiB per commit, map sized up front: the journal's floor."""
    env = lmdb.open(str(path), map_size=4 * GiB, sync=True, metasync=True, max_dbs=2)
    try:
        db = env.open_db(b"blobs")
        buf = memoryview(bytearray(16 * MiB))
        txn = env.begin(write=True)
        key = held = 0
        for source in files:
            with open(source, "rb", buffering=0) as f:
                while got := f.readinto(buf):
                    for at in range(0, got, 4 * MiB):
                        value = buf[at : min(got, at + 4 * MiB)]
                        txn.put(key.to_bytes(8, "big"), value, db=db)
                        key += 1
                        held += len(value)
                        if held >= 64 * MiB:
                            txn.commit()
                            txn = env.begin(write=True)
                            held = 0
        txn.commit()
    finally:
        env.close()


def bound_both(src: Path, work: Path, files: list[Path]) -> None:
    """The journal floor and the replica floor at once, in two threads (what xoengine's
    design must do at `sync`: 2 GiB written and flushed)."""
    work.mkdir(parents=True, exist_ok=True)
    journal = threading.Thread(target=bound_lmdb_blobs, args=(work / "lmdb", files))
    journal.start()
    bound_copy_tree(src, work / "copy", files)
    journal.join()


def measure_bounds(src: Path, work: Path, size: int) -> dict[str, float]:
    files = _tree_files(src)
    out: dict[str, float] = {}
    steps: list[tuple[str, Any]] = [
        (f"write + fsync {fmt_bytes(size)}, one file", lambda: bound_plain_write(work, size)),
        (
            f"write + fsync {fmt_bytes(2 * size)}, one file",
            lambda: bound_plain_write(work, 2 * size),
        ),
        ("copy tree (copy_file_range) + sync", lambda: bound_copy_tree(src, work / "c", files)),
        ("LMDB put + commit of the tree at sync", lambda: bound_lmdb_blobs(work / "l", files)),
        ("LMDB at sync || copy tree + sync", lambda: bound_both(src, work / "b", files)),
    ]
    for name, step in steps:
        rmtree(work)
        work.mkdir(parents=True)
        t, _ = timed(step)
        out[name] = t
    rmtree(work)
    return out


def case_a(cfg: Config, rsync: str | None, rep: Report) -> None:
    log(f"\n(a) initial sync: mixed tree, {fmt_bytes(cfg.size)} in ~{cfg.mixed_files} files")
    src = cached(
        cfg.cache,
        f"mixed-{cfg.size}-{cfg.mixed_files}",
        lambda p: build_mixed(p, cfg.size, cfg.mixed_files),
    )
    nfiles = sum(len(fs) for _, _, fs in os.walk(src))
    log(f"  source {src}: {nfiles} files, {fmt_bytes(warm(src))} (read once to warm the cache)")
    work = cfg.work / "a"
    xo: dict[str, list[float]] = {"sync": [], "nosync": []}
    rs: list[float] = []
    rs_sync: list[float] = []
    bounds: dict[str, list[float]] = {}
    journal = 0
    for rnd in range(cfg.rounds):
        # Interleaved, so that a slow patch of the (shared) disk does not land on one tool only.
        for durability in ("sync", "nosync"):
            rmtree(work)
            state, dst = work / "state", work / "replica"

            def run(durability: str = durability, state: Path = state, dst: Path = dst) -> Any:
                eng, sc = open_scenario(state, src, dst, durability)
                summaries = sc.start()
                eng.close()
                return summaries

            t, summaries = timed(run)
            xo[durability].append(t)
            assert same_tree(src, dst)
            alloc, apparent = journal_on_disk(state)
            journal = alloc
            log(
                f"  round {rnd + 1}: xoengine start() [{durability}]: {fmt_s(t)}; bytes sent "
                f"{fmt_bytes(summaries[0].bytes_sent)}; journal {fmt_bytes(alloc)} on disk "
                f"({fmt_bytes(apparent)} apparent)"
            )
        if rsync:
            rmtree(work)
            work.mkdir(parents=True)
            dst = work / "rsync"
            t, _ = run_rsync(rsync, ["-a", f"{src}/", f"{dst}/"])
            t0 = time.perf_counter()
            os.sync()
            rs.append(t)
            rs_sync.append(t + (time.perf_counter() - t0))
            assert same_tree(src, dst)
            log(f"  round {rnd + 1}: rsync -a: {fmt_s(rs[-1])} (+ sync: {fmt_s(rs_sync[-1])})")
        for name, t in measure_bounds(src, work / "bounds", cfg.size).items():
            bounds.setdefault(name, []).append(t)
            log(f"  round {rnd + 1}: bound: {name}: {fmt_s(t)}")
    # Phase split: capture (the baseline into the journal), then synchronize (the replica copy).
    phases: dict[str, float] = {}
    for durability in ("sync", "nosync"):
        rmtree(work)
        state, dst = work / "state", work / "replica"
        os.sync()
        t0 = time.perf_counter()
        eng, sc = open_scenario(state, src, dst, durability)
        t1 = time.perf_counter()
        cap = sc.capture()
        t2 = time.perf_counter()
        sc.synchronize()
        t3 = time.perf_counter()
        eng.close()
        phases[durability + ".capture"] = t2 - t1
        phases[durability + ".sync"] = t3 - t2
        log(
            f"  phases [{durability}]: open+create {fmt_s(t1 - t0)}, capture {fmt_s(t2 - t1)} "
            f"({cap.events} events, {fmt_bytes(cap.bytes_journaled)} journaled), "
            f"synchronize {fmt_s(t3 - t2)}"
        )
    rmtree(work)
    xs, xn = med(xo["sync"]), med(xo["nosync"])
    r, rsy = (med(rs), med(rs_sync)) if rs else (None, None)
    rep.row("a", "initial sync, durability sync", fmt_s(xs), fmt_s(r), fmt_ratio(ratio(xs, r)))
    rep.row("a", "initial sync, durability nosync", fmt_s(xn), fmt_s(r), fmt_ratio(ratio(xn, r)))
    rep.row(
        "a",
        "  reference: rsync -a followed by sync",
        fmt_s(xs),
        fmt_s(rsy),
        fmt_ratio(ratio(xs, rsy)),
    )
    for name, times in bounds.items():
        b = med(times)
        rep.row("a", f"  bound: {name}", fmt_s(b), fmt_s(r), fmt_ratio(ratio(b, r)))
    for d in ("sync", "nosync"):
        rep.row("a", f"  phase [{d}]: capture (baseline journal)", fmt_s(phases[d + ".capture"]))
        rep.row("a", f"  phase [{d}]: synchronize (replica copy)", fmt_s(phases[d + ".sync"]))
    rep.row("a", "  journal on disk after the baseline", fmt_bytes(journal))
    rep.targets.append(
        Target("a", "initial sync time (sync) <= 1.5x rsync", ratio(xs, r), 1.5, "x")
    )
    rep.targets.append(
        Target("a", "initial sync time (nosync) <= 1.5x rsync", ratio(xn, r), 1.5, "x")
    )


def _one_file_setup(
    cfg: Config,
    tag: str,
    size: int,
    seed: int,
) -> tuple[Path, Path, Path, Path, Engine, Any]:
    base = cached(cfg.cache, f"one-{size}-{seed}", lambda p: build_one(p, size, seed))
    work = cfg.work / tag
    rmtree(work)
    master, replica, state, rdst = work / "master", work / "replica", work / "state", work / "rsync"
    master.mkdir(parents=True)
    rdst.mkdir(parents=True)
    shutil.copyfile(base / "big.bin", master / "big.bin")
    shutil.copyfile(base / "big.bin", rdst / "big.bin")  # rsync's destination: the old content
    eng, sc = open_scenario(state, master, replica, "sync")
    t0 = time.perf_counter()
    sc.start()
    log(f"  baseline: start() on {fmt_bytes(size)} took {fmt_s(time.perf_counter() - t0)}")
    return work, master, replica, rdst, eng, sc


def _reopen(eng: Engine, state: Path, durability: str) -> tuple[Engine, Any]:
    """The same scenario under another durability (start() finds the replica in line)."""
    eng.close()
    eng = Engine.open(state, durability=durability)
    sc = eng.scenario("bench")
    sc.start()
    return eng, sc


def _capture_and_apply(sc: Any, profile: Path | None, name: str) -> tuple[float, float, Any]:
    os.sync()
    gc.collect()
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    result = sc.capture()
    t1 = time.perf_counter()
    sc.wait_replicated(timeout=600)
    t2 = time.perf_counter()
    if prof:
        prof.disable()
        assert profile is not None
        prof.dump_stats(profile / f"{name}.pstats")
    return t1 - t0, t2 - t1, result


def case_b(cfg: Config, rsync: str | None, rep: Report) -> None:
    size = cfg.size
    nblocks = size // BLOCK
    nchanged = nblocks // 100
    changed = nchanged * BLOCK
    log(
        f"\n(b) {fmt_bytes(size)} file, 1% of 4 KiB blocks rewritten in place "
        f"({nchanged} random blocks, {fmt_bytes(changed)}; new random blocks every round)"
    )
    rng = np.random.default_rng(7)
    work, master, replica, rdst, eng, sc = _one_file_setup(cfg, "b", size, 11)
    xo: dict[str, list[tuple[float, float, Any]]] = {"sync": [], "nosync": []}
    rs: list[float] = []
    lit: list[int] = []
    for durability in ("sync", "nosync"):
        if durability == "nosync":
            eng, sc = _reopen(eng, work / "state", durability)
        extra = 1 if cfg.profile else 0  # a last, untimed round under cProfile
        for rnd in range(cfg.rounds + extra):
            # Each round changes 1% of the blocks of the previous round's content: the
            # replica and rsync's destination both hold that content.
            which = np.sort(rng.choice(nblocks, size=nchanged, replace=False))
            payload = random_bytes(rng, changed)
            with open(master / "big.bin", "r+b") as f:
                for k, blk in enumerate(which.tolist()):
                    os.pwrite(f.fileno(), payload[k * BLOCK : (k + 1) * BLOCK], blk * BLOCK)
            warm(master)
            warm(rdst)
            profiled = rnd == cfg.rounds
            cap, app, result = _capture_and_apply(
                sc, cfg.profile if profiled else None, f"b-{durability}"
            )
            if profiled:
                log(f"  profiled round (not counted): capture {fmt_s(cap)} + apply {fmt_s(app)}")
            else:
                xo[durability].append((cap, app, result))
            records = event_record_bytes(eng, result.positions)
            if not profiled:
                log(
                    f"  round {rnd + 1}: xoengine [{durability}]: capture {fmt_s(cap)} + apply "
                    f"{fmt_s(app)} = {fmt_s(cap + app)}; journaled "
                    f"{fmt_bytes(result.bytes_journaled)} of blobs + {fmt_bytes(records)} of "
                    f"event records ({result.events} events)"
                )
            if rsync:
                # -I (--ignore-times): rsync's quick check must not skip a file whose
                # mtime lands in the same second as its last copy.
                t, stats = run_rsync(
                    rsync,
                    [
                        "--no-whole-file",
                        "--inplace",
                        "-B",
                        "4096",
                        "-I",
                        "--stats",
                        str(master / "big.bin"),
                        str(rdst / "big.bin"),
                    ],
                )
                if profiled:
                    continue
                rs.append(t)
                lit.append(stats.get("Literal data", 0))
                log(
                    f"  round {rnd + 1}: rsync --no-whole-file --inplace -B 4096 -I: {fmt_s(t)}, "
                    f"literal {fmt_bytes(lit[-1])}"
                )
    assert same_tree(master, replica)
    if rsync:
        assert same_tree(master, rdst)
    eng.close()
    rmtree(work)
    total = {d: med([c + a for c, a, _ in v]) for d, v in xo.items()}
    cap = med([c for c, _, _ in xo["sync"]])
    app = med([a for _, a, _ in xo["sync"]])
    journaled = max(r.bytes_journaled for v in xo.values() for _, _, r in v)
    r = med(rs) if rs else None
    literal = med(lit) if lit else None
    rep.row("b", "  event records journaled (not in bytes_journaled)", fmt_bytes(records))
    rep.row(
        "b",
        "1% blocks: capture + apply (sync)",
        fmt_s(total["sync"]),
        fmt_s(r),
        fmt_ratio(ratio(total["sync"], r)),
    )
    rep.row(
        "b",
        "1% blocks: capture + apply (nosync)",
        fmt_s(total["nosync"]),
        fmt_s(r),
        fmt_ratio(ratio(total["nosync"], r)),
    )
    rep.row("b", "  of which capture / apply (sync)", f"{fmt_s(cap)} / {fmt_s(app)}")
    rep.row(
        "b",
        "1% blocks: bytes journaled / literal",
        fmt_bytes(journaled),
        fmt_bytes(literal),
        fmt_ratio(ratio(journaled, literal)),
    )
    rep.row("b", "  bytes actually changed", fmt_bytes(changed))
    rep.targets.append(
        Target("b", "journaled bytes <= 1.1x bytes changed", ratio(journaled, changed), 1.1, "x")
    )
    rep.targets.append(
        Target(
            "b",
            "  same, counting event records too (info)",
            ratio(journaled + records, changed),
            1.1,
            "x",
        )
    )
    rep.targets.append(
        Target("b", "capture + apply time (sync) <= 0.5x rsync", ratio(total["sync"], r), 0.5, "x")
    )
    rep.targets.append(
        Target(
            "b", "capture + apply time (nosync) <= 0.5x rsync", ratio(total["nosync"], r), 0.5, "x"
        )
    )


def case_c(cfg: Config, rsync: str | None, rep: Report) -> None:
    size = cfg.insert_size
    log(f"\n(c) 100 bytes inserted at offset 0 of a {fmt_bytes(size)} file (again every round)")
    rng = np.random.default_rng(9)
    work, master, replica, rdst, eng, sc = _one_file_setup(cfg, "c", size, 13)
    xo: list[tuple[float, float, Any]] = []
    rs: list[float] = []
    lit: list[int] = []
    extra = 1 if cfg.profile else 0  # a last, untimed round under cProfile
    for rnd in range(cfg.rounds + extra):
        old = (master / "big.bin").read_bytes()
        with open(master / "big.bin", "r+b") as f:  # same inode: an edit, not a new file
            f.write(random_bytes(rng, 100) + old)
        del old
        warm(master)
        warm(rdst)
        profiled = rnd == cfg.rounds
        cap, app, result = _capture_and_apply(sc, cfg.profile if profiled else None, "c-sync")
        if profiled:
            log(f"  profiled round (not counted): capture {fmt_s(cap)} + apply {fmt_s(app)}")
            if rsync:
                run_rsync(
                    rsync, ["--no-whole-file", "-I", str(master / "big.bin"), str(rdst / "big.bin")]
                )
            continue
        xo.append((cap, app, result))
        records = event_record_bytes(sc._engine, result.positions)
        log(
            f"  round {rnd + 1}: xoengine [sync]: capture {fmt_s(cap)} + apply {fmt_s(app)}; "
            f"journaled {fmt_bytes(result.bytes_journaled)} of blobs + {fmt_bytes(records)} of "
            f"event records ({result.events} events)"
        )
        if rsync:
            t, stats = run_rsync(
                rsync,
                [
                    "--no-whole-file",
                    "-I",
                    "--stats",
                    str(master / "big.bin"),
                    str(rdst / "big.bin"),
                ],
            )
            rs.append(t)
            lit.append(stats.get("Literal data", 0))
            log(
                f"  round {rnd + 1}: rsync --no-whole-file -I (default block size): {fmt_s(t)}, "
                f"literal {fmt_bytes(lit[-1])}"
            )
    assert same_tree(master, replica)
    if rsync:
        assert same_tree(master, rdst)
    eng.close()
    rmtree(work)
    journaled = max(r.bytes_journaled for _, _, r in xo)
    total = med([c + a for c, a, _ in xo])
    r = med(rs) if rs else None
    literal = med(lit) if lit else None
    rep.row(
        "c",
        "insert 100 B at 0: bytes journaled / literal",
        fmt_bytes(journaled),
        fmt_bytes(literal),
        fmt_ratio(ratio(journaled, literal)),
    )
    rep.row("c", "  event records journaled (not in bytes_journaled)", fmt_bytes(records))
    rep.row(
        "c",
        "insert 100 B at 0: capture + apply (sync)",
        fmt_s(total),
        fmt_s(r),
        fmt_ratio(ratio(total, r)),
    )
    rep.row(
        "c",
        "  of which capture / apply",
        f"{fmt_s(med([c for c, _, _ in xo]))} / {fmt_s(med([a for _, a, _ in xo]))}",
    )
    # Everything the journal grew by: the blobs and the event records (the new block
    # map of the shifted file is the master state's, not in the record). Blobs alone: info.
    rep.targets.append(
        Target(
            "c", "journaled bytes (blobs + records) <= 64 KiB", journaled + records, 64 * KiB, "B"
        )
    )
    rep.targets.append(Target("c", "  blobs only (info)", journaled, 64 * KiB, "B"))


def case_d(cfg: Config, rsync: str | None, rep: Report) -> None:
    log(f"\n(d) unchanged tree of {cfg.small_files} small files: a pass that finds nothing")
    src = cached(
        cfg.cache, f"small-{cfg.small_files}", lambda p: build_small_tree(p, cfg.small_files)
    )
    warm(src)
    work = cfg.work / "d"
    rmtree(work)
    eng, sc = open_scenario(work / "state", src, work / "replica", "sync")
    os.sync()
    t0 = time.perf_counter()
    sc.start()
    base = time.perf_counter() - t0
    log(f"  baseline start() [sync]: {fmt_s(base)}")
    dst = work / "rsync"
    base_rs = None
    if rsync:
        base_rs, _ = run_rsync(rsync, ["-a", f"{src}/", f"{dst}/"])
        log(f"  rsync -a into an empty destination: {fmt_s(base_rs)}")
    xs: list[float] = []
    rts: list[float] = []
    prof = cProfile.Profile() if cfg.profile else None
    for _ in range(cfg.d_rounds):
        t, result = timed(sc.capture)
        assert result.events == 0, result
        xs.append(t)
        if rsync:
            t, stats = run_rsync(rsync, ["-a", "--stats", f"{src}/", f"{dst}/"])
            assert stats.get("Number of regular files transferred", 0) == 0, stats
            rts.append(t)
    if prof and cfg.profile:  # one more pass, untimed, under cProfile
        prof.enable()
        sc.capture()
        prof.disable()
        prof.dump_stats(cfg.profile / "d-capture.pstats")
    eng.close()
    xo = med(xs)
    log(f"  xoengine capture(), nothing changed: median {fmt_s(xo)} of {spread(xs)}")
    rs = med(rts) if rts else None
    if rts:
        log(f"  rsync -a, nothing changed: median {fmt_s(rs)} of {spread(rts)}")
    rmtree(work)
    rep.row(
        "d",
        f"no-change pass, {cfg.small_files} files",
        fmt_s(xo),
        fmt_s(rs),
        fmt_ratio(ratio(xo, rs)),
    )
    rep.row(
        "d",
        "  setup (info): initial sync, start() [sync]",
        fmt_s(base),
        fmt_s(base_rs),
        fmt_ratio(ratio(base, base_rs)),
    )
    rep.targets.append(Target("d", "no-change pass time <= 1.0x rsync", ratio(xo, rs), 1.0, "x"))


def case_e(cfg: Config, rep: Report) -> None:
    n = cfg.lag_writes
    log(f"\n(e) lag from write to replica-applied, {n} writes of 200-400 bytes through sc.open")
    nfiles, fsize = 16, 256 * KiB
    for durability in ("sync", "nosync"):
        _lag(cfg, rep, durability, nfiles, fsize)


def _lag(cfg: Config, rep: Report, durability: str, nfiles: int, fsize: int) -> None:
    n = cfg.lag_writes
    work = cfg.work / "e"
    rmtree(work)
    master, replica = work / "master", work / "replica"
    rng = np.random.default_rng(5)
    for i in range(nfiles):
        write_random(master / f"w{i:02d}.bin", fsize, rng)
    eng, sc = open_scenario(work / "state", master, replica, durability)
    sc.start()
    os.sync()
    rnd = random.Random(5)
    fds = [os.open(replica / f"w{i:02d}.bin", os.O_RDONLY) for i in range(nfiles)]

    def one_write(i: int) -> tuple[int, int, bytes, float, float]:
        k = i % nfiles
        length = rnd.randint(200, 400)
        offset = rnd.randrange(0, fsize - length)
        data = random_bytes(rng, length)
        with sc.open(f"w{k:02d}.bin", "r+b") as f:
            f.seek(offset)
            f.write(data)
            t_write = time.perf_counter()
        return k, offset, data, t_write, time.perf_counter()

    def visible(k: int, offset: int, data: bytes) -> bool:
        return os.pread(fds[k], len(data), offset) == data

    # 1. One write at a time: write, close (journals), poll the replica.
    lags, commits, waits = [], [], []
    for i in range(n):
        k, offset, data, t_write, t_closed = one_write(i)
        while not visible(k, offset, data):
            time.sleep(0.00005)
        lags.append(time.perf_counter() - t_write)
        commits.append(t_closed - t_write)
        time.sleep(0.001)
    # 1b. The same, waiting with wait_replicated() instead of polling.
    for i in range(n):
        _, _, _, t_write, _ = one_write(i)
        sc.wait_replicated(timeout=60)
        waits.append(time.perf_counter() - t_write)
    # 2. A steady stream: writes paced at lag_rate/s, a poller thread watching.
    pending: list[tuple[int, int, bytes, float]] = []
    stream_lags: list[float] = []
    lock = threading.Lock()
    done = threading.Event()

    def poller() -> None:
        while not (done.is_set() and not pending):
            with lock:
                head = pending[0] if pending else None
            if head is None or not visible(*head[:3]):
                time.sleep(0.0001)
                continue
            stream_lags.append(time.perf_counter() - head[3])
            with lock:
                pending.pop(0)

    watcher = threading.Thread(target=poller)
    watcher.start()
    interval = 1.0 / cfg.lag_rate
    next_at = time.perf_counter()
    for i in range(n):
        # distinct offsets per write so an older write is never overwritten by a newer one
        k = i % nfiles
        length = 300
        offset = (i // nfiles) * 512 % (fsize - 512)
        data = random_bytes(rng, length)
        with sc.open(f"w{k:02d}.bin", "r+b") as f:
            f.seek(offset)
            f.write(data)
            t_write = time.perf_counter()
            with lock:
                pending.append((k, offset, data, t_write))
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    elapsed = time.perf_counter() - (next_at - n * interval)
    done.set()
    watcher.join()
    for fd in fds:
        os.close(fd)
    assert same_tree(master, replica)
    eng.close()
    rmtree(work)
    rate = n / elapsed
    log(
        f"  [{durability}] one at a time (poll): p50 {fmt_s(percentile(lags, 50))}, "
        f"p99 {fmt_s(percentile(lags, 99))}; journal commit at close p50 "
        f"{fmt_s(percentile(commits, 50))}"
    )
    log(
        f"  [{durability}] one at a time (wait_replicated): p50 "
        f"{fmt_s(percentile(waits, 50))}, "
        f"p99 {fmt_s(percentile(waits, 99))}"
    )
    log(
        f"  [{durability}] steady stream at {rate:.0f} writes/s: p50 "
        f"{fmt_s(percentile(stream_lags, 50))}, p99 {fmt_s(percentile(stream_lags, 99))}"
    )
    rep.row(
        "e",
        f"lag p50 / p99, one at a time ({durability})",
        f"{fmt_s(percentile(lags, 50))} / {fmt_s(percentile(lags, 99))}",
    )
    rep.row(
        "e",
        f"lag p50 / p99, wait_replicated ({durability})",
        f"{fmt_s(percentile(waits, 50))} / {fmt_s(percentile(waits, 99))}",
    )
    rep.row(
        "e",
        f"lag p50 / p99, stream {rate:.0f}/s ({durability})",
        f"{fmt_s(percentile(stream_lags, 50))} / {fmt_s(percentile(stream_lags, 99))}",
    )


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scaled-down smoke run")
    parser.add_argument(
        "--size-gib",
        type=float,
        default=None,
        help="size of cases (a) and (b) in GiB (default 1; --quick 1/16)",
    )
    parser.add_argument("--cases", default="abcde", help="which cases to run (default abcde)")
    parser.add_argument("--work", default="/tmp/xoengine-bench-sync", help="scratch directory")
    parser.add_argument("--cache", default="/tmp/xoengine-bench-cache", help="test data cache")
    parser.add_argument(
        "--profile", default=None, help="directory for cProfile dumps of the timed xoengine steps"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="timed rounds per case, medians reported (default 3; --quick 1)",
    )
    parser.add_argument("--no-install", action="store_true", help="never apt-get install rsync")
    args = parser.parse_args()
    size_gib = args.size_gib if args.size_gib is not None else (1 / 16 if args.quick else 1.0)
    cfg = Config(
        quick=args.quick,
        size=int(size_gib * GiB) // BLOCK * BLOCK,
        mixed_files=100 if args.quick else 1000,
        insert_size=(8 if args.quick else 64) * MiB,
        small_files=1000 if args.quick else 10000,
        lag_writes=100 if args.quick else 500,
        lag_rate=200.0,
        d_rounds=3 if args.quick else 7,
        rounds=args.rounds or (1 if args.quick else 3),
        work=Path(args.work),
        cache=Path(args.cache),
        profile=Path(args.profile) if args.profile else None,
    )
    if cfg.profile:
        cfg.profile.mkdir(parents=True, exist_ok=True)
    global SCRATCH  # noqa: PLW0603 (one work directory per run)
    SCRATCH = Scratch(cfg.work)
    cfg.cache.mkdir(parents=True, exist_ok=True)
    log(
        f"bench_sync: xoengine {getattr(xoengine, '__version__', '?')}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, {platform.platform()}"
    )
    log(f"  {' '.join(sys.argv)}")
    rsync = None if args.no_install and not shutil.which("rsync") else ensure_rsync()
    if rsync:
        ver = subprocess.run([rsync, "--version"], capture_output=True, text=True, check=False)
        log(f"  {ver.stdout.splitlines()[0]}")
    rep = Report()
    t0 = time.perf_counter()
    for case in args.cases:
        log(f"\n[load average before case {case}: {load()}]")
        if case == "a":
            case_a(cfg, rsync, rep)
        elif case == "b":
            case_b(cfg, rsync, rep)
        elif case == "c":
            case_c(cfg, rsync, rep)
        elif case == "d":
            case_d(cfg, rsync, rep)
        elif case == "e":
            case_e(cfg, rep)
    SCRATCH.empty()
    log(f"\n[load average at the end: {load()}]")
    log(f"\nSummary (ratios are xoengine / rsync; total run {time.perf_counter() - t0:.0f} s)")
    log(f"  {'case':<5}{'measure':<54}{'xoengine':>14}{'rsync':>12}{'ratio':>9}")
    for case, what, xo, rs, r in rep.rows:
        log(f"  {case:<5}{what:<54}{xo:>14}{rs:>12}{r:>9}")
    log("\nTargets")
    for t in rep.targets:
        limit = f"{t.limit:.2f}x" if t.unit == "x" else fmt_bytes(t.limit)
        log(
            f"  {t.verdict:<5} ({t.case}) {t.what:<48} measured {t.shown(t.value):>10}  "
            f"limit {limit}"
        )
    if cfg.profile:
        for p in sorted(cfg.profile.glob("*.pstats")):
            log(f"\nprofile {p.name} (top 12 by cumulative time)")
            pstats.Stats(str(p)).sort_stats("cumulative").print_stats(12)


if __name__ == "__main__":
    main()
