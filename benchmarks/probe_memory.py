"""How much memory one change to one large file takes, end to end: a probe.

    python benchmarks/probe_memory.py [--mib 1024] [--dir DIR]    # ~1 min at 1 GiB

Each case runs in a process of its own (a fresh peak) on a real engine under
DIR: a master file of ``--mib`` MiB, one replica, then one change captured and
applied, and for the shifting change a rewind and a replay of it too. A thread
samples ``RssAnon`` (process memory, not page cache or the journal's map)
every 5 ms and the peak of each step is printed, with its time. Cases:

- ``insert``: 80 bytes put in front of the file (a delta: capture reads it
  whole, the replica rebuilds it from its own bytes);
- ``new``: the file created whole (read once, journaled in 4 MiB blobs);
- ``rewrite``: every byte rewritten, same size (in-place writes).

With bounded memory each peak stays near the 256 MiB of ``tree.HOLD_MAX``
plus buffers whatever ``--mib`` is; a file read whole into memory shows as a
peak of at least its size. docs/performance.md (session 8) has the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

MiB = 1024 * 1024


class Peak:
    """The highest ``RssAnon`` of this process since the last :meth:`take` (MiB)."""

    def __init__(self) -> None:
        self.value = 0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while True:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("RssAnon:"):
                        self.value = max(self.value, int(line.split()[1]) // 1024)
            time.sleep(0.005)

    def take(self) -> int:
        value, self.value = self.value, 0
        return value


def fill(path: Path, mib: int, *, mode: str = "wb") -> None:
    chunk = os.urandom(MiB)
    with open(path, mode) as f:
        f.writelines(chunk for _ in range(mib))


def run_case(case: str, mib: int, base: Path) -> None:
    """One case in this process: print one line of steps."""
    from xoengine.engine import Engine  # noqa: PLC0415

    master = base / "master"
    master.mkdir(parents=True)
    big = master / "big"
    if case != "new":
        fill(big, mib)
    peak = Peak()
    steps: list[str] = []

    def step(name: str, work: Callable[[], object]) -> None:
        peak.take()
        started = time.perf_counter()
        work()
        steps.append(f"{name} {peak.take()} MiB {time.perf_counter() - started:.1f} s")

    eng = Engine.open(base / "state", durability="nosync")
    sc = eng.create_scenario("m", master=str(master), replicas={"r1": str(base / "r1")})
    step("start", sc.start)
    point = sc.set_rewind_point("before")
    sc.suspend("r1")
    if case == "new":
        fill(big, mib)
    elif case == "rewrite":
        fill(big, mib, mode="r+b")
    else:
        with open(big, "rb") as old, open(master / "big.new", "wb") as new:
            new.write(b"inserted" * 10)
            shutil.copyfileobj(old, new, MiB)
        os.replace(master / "big.new", big)
    os.sync()
    step("capture", sc.capture)
    step("apply", lambda: (sc.resume("r1"), sc.wait_replicated()))
    if case == "insert":
        step("rewind", lambda: sc.rewind("r1", point))
        step("replay", lambda: eng.replay(sc, to=base / "out"))
    eng.close()
    print(f"{case:<8} {mib} MiB: " + ", ".join(steps), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the file (MiB)")
    parser.add_argument("--dir", default=None, help="where to build (default: a temporary dir)")
    parser.add_argument("--case", choices=["insert", "new", "rewrite"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        run_case(args.case, args.mib, Path(args.dir))
        return
    print(f"peak RssAnon and time of each step, {args.mib} MiB file, one process per case")
    for case in ("insert", "new", "rewrite"):
        base = Path(tempfile.mkdtemp(prefix=f"xoengine-memory-{case}-", dir=args.dir))
        try:
            command = [sys.executable, __file__, "--case", case, "--mib", str(args.mib)]
            subprocess.run([*command, "--dir", str(base)], check=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
