"""What writing costs on this machine, apart from any xoengine code: two probes.

    python benchmarks/probe_writes.py [--dir DIR]      # ~10 s; DIR on the file system to probe

1. Truncations: 1,200 files of 32 KiB cut to 1 KiB, with their blocks on disk
   (after ``os.sync()``), still delayed allocations (not synced), and on tmpfs
   (``/dev/shm``). A file system mounted with ``discard`` trims each freed block
   range in the truncation: the first figure then stands far above the others.
2. New pages: four 64 MiB files written in 4 MiB pieces into new page-cache
   pages, twice, then again right after unlinking the first files (the
   allocator still holds their pages). Where the guest reports freed memory to
   its host (virtio-balloon free page reporting), new pages cost a host fault
   each and the third figure stands far below the first two.

docs/performance.md (session 7) has the figures of this machine kind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024


def cut_files(root: Path, *, synced: bool) -> float:
    """Seconds to cut 1,200 files of 32 KiB to 1 KiB (one open + ftruncate + close each)."""
    data = os.urandom(32 * 1024)
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"f{i}" for i in range(1200)]
    for path in paths:
        path.write_bytes(data)
    if synced:
        os.sync()
    started = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_WRONLY)
        os.ftruncate(fd, 1024)
        os.close(fd)
    seconds = time.perf_counter() - started
    shutil.rmtree(root)
    return seconds


def write_files(root: Path, tag: str, data: memoryview) -> float:
    """Seconds to write four 64 MiB files in 4 MiB pieces."""
    started = time.perf_counter()
    for i in range(4):
        fd = os.open(root / f"{tag}{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        for offset in range(0, len(data), 4 * MiB):
            os.pwrite(fd, data[offset : offset + 4 * MiB], offset)
        os.close(fd)
    return time.perf_counter() - started


def main() -> None:
    """Run both probes and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="probe-writes-") as scratch:
        base = Path(scratch)
        print("1,200 truncations of 32 KiB files to 1 KiB:")
        print(f"  blocks on disk (synced):    {cut_files(base / 'synced', synced=True):.3f} s")
        print(f"  delayed allocation:         {cut_files(base / 'delayed', synced=False):.3f} s")
        if Path("/dev/shm").is_dir():
            with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="probe-writes-") as shm:
                print(f"  tmpfs:                      {cut_files(Path(shm), synced=True):.3f} s")
        data = memoryview(os.urandom(64 * MiB))
        print("four 64 MiB files written (256 MiB):")
        print(f"  into new pages:             {write_files(base, 'a', data):.3f} s")
        os.sync()
        print(f"  into new pages, again:      {write_files(base, 'b', data):.3f} s")
        os.sync()
        for tag in "ab":
            for i in range(4):
                os.unlink(base / f"{tag}{i}")
        print(f"  into pages just freed:      {write_files(base, 'c', data):.3f} s")


if __name__ == "__main__":
    main()
