"""Time and peak memory of forensic questions on a long journal of small writes.

    python benchmarks/probe_forensics.py                  # 50,000 writes (~1 min to build)
    python benchmarks/probe_forensics.py --writes 200000  # the figures in docs/performance.md
    python benchmarks/probe_forensics.py --keep           # keep the journal for another run

Builds a scenario (one replica) over 100 files of 4 KiB and journals
``--writes`` writes of 16 bytes through ``sc.open`` (one event each, spread over
the files). Then each question runs in a process of its own, so that its peak
RSS (``getrusage``) is its own: the read-only open of the engine alone, the
history of one file, the replay of one file, a diff from the middle of the
journal to its end, a replay of the whole tree twice: by the fold of every event (what positions up to ``forensic._FOLD_MAX``
use) and one identity at a time (what longer journals use), and the
scenario's statistics three times: read-only (the first question after an open reads
what the ledger's table lacks: here, every event), from a writable engine (the
same, and it writes the totals to the table), read-only again (from the table).
Each replay is
checked against the master. The first line, the open engine alone, is the
baseline of the memory figures; its time is the open's.

A probe, not a comparison with an anchor: it shows how the cost of a
question follows the journal's length.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

FILES = 100
QUESTIONS = (
    "open",
    "history",
    "replay-file",
    "diff",
    "replay-tree-fold",
    "replay-tree-streamed",
    "statistics",
    "statistics-writable",
    "statistics-again",
)


def build(work: Path, writes: int) -> None:
    from xoengine import Engine  # noqa: PLC0415

    shutil.rmtree(work, ignore_errors=True)
    master = work / "master"
    master.mkdir(parents=True)
    for i in range(FILES):
        (master / f"f{i:03d}").write_bytes(b"x" * 4096)
    with Engine.open(work / "state", durability="nosync", map_size=16 << 30) as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(work / "r1")})
        sc.start()
        started = time.perf_counter()
        files = [sc.open(f"f{i:03d}") for i in range(FILES)]
        for n in range(writes):
            handle = files[n % FILES]
            handle.seek((n * 64) % 4096)
            handle.write(os.urandom(16))
            handle.flush()
        for handle in files:
            handle.close()
        sc.stop()
        print(
            f"built: {writes} writes in {time.perf_counter() - started:.1f} s, "
            f"journal position {eng.last_position()}",
            flush=True,
        )


def ask(work: Path, question: str) -> None:
    import xoengine.forensic as forensic  # noqa: PLC0415
    from xoengine import Engine  # noqa: PLC0415

    if question == "replay-tree-streamed":
        forensic._FOLD_MAX = 0  # as for a journal longer than it
    elif question == "replay-tree-fold":
        forensic._FOLD_MAX = 1 << 62
    out = work / f"out-{question}"
    shutil.rmtree(out, ignore_errors=True)
    opening = time.perf_counter()
    writable = question == "statistics-writable"
    with Engine.open(work / "state", readonly=not writable, durability="nosync") as eng:
        # "open" is the open itself (it reads the scenario events); the others start after it.
        started = opening if question == "open" else time.perf_counter()
        if question == "history":
            what = f"{len(eng.history('s', 'f007'))} entries"
        elif question == "replay-file":
            eng.replay("s", to=out, path="f007")
            same = filecmp.cmp(out / "f007", work / "master" / "f007", shallow=False)
            what = "same as the master" if same else "DIFFERS from the master"
        elif question == "diff":
            half = eng.last_position() // 2
            what = f"{len(eng.diff('s', half).modified)} files modified since position {half}"
        elif question.startswith("statistics"):
            stats = eng.scenario("s").statistics().replicas["r1"]
            what = f"{stats.files_replicated} events replicated, {stats.undo_records} undo records"
        elif question.startswith("replay-tree"):
            result = eng.replay("s", to=out)
            mismatch = filecmp.dircmp(out, work / "master").diff_files
            what = f"{result.files} files, " + ("same as the master" if not mismatch else "DIFFER")
        else:
            what = "the engine alone"
        seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  {question:22} {seconds:6.2f} s  peak {peak:5.0f} MiB  ({what})", flush=True)
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=50_000)
    parser.add_argument("--work", default="/tmp/xoengine-probe-forensics")
    parser.add_argument("--keep", action="store_true", help="keep (and reuse) the journal")
    parser.add_argument("--question", choices=QUESTIONS, help=argparse.SUPPRESS)
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.question:
        ask(work, args.question)
        return
    if args.build_only:
        build(work, args.writes)
        return
    if not (args.keep and (work / "state").exists()):
        # In a child: a process exec'd from this one starts with this one's peak RSS
        # (Linux carries ru_maxrss across execve), so this one must stay small.
        subprocess.run(
            [sys.executable, __file__, "--work", str(work), "--writes", str(args.writes),
             "--build-only"],
            check=True,
        )  # fmt: skip
    try:
        for question in QUESTIONS:
            subprocess.run(
                [sys.executable, __file__, "--work", str(work), "--question", question],
                check=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
