"""Scratch space for the benchmarks: nothing is deleted while a benchmark measures.

This machine kind's root file system is ext4 *without a journal*. There, ext4
never hands out an inode freed in the last 1-5 s (up to 305 s while its
inode-table block is dirty: ``recently_deleted()`` in ``fs/ext4/ialloc.c``),
and every file creation in that block group scans past all of them. After a
few thousand deletions (a removed tree, or files replaced by temp + rename) a
creation costs 240-900 µs instead of 20-25 µs (``perf`` puts the time in
``recently_deleted``/``find_get_block_common``). A benchmark that deletes one
tree and then times writing another would mostly measure that scan, and by
how much depends on which block group each directory landed in.

So the benchmarks:

- mark their work directory ``chattr +T`` (ext4's "top of a directory
  hierarchy" hint), so that the directories made in it (master, replicas,
  journals, outputs) are spread over different block groups instead of
  sharing the groups of the trees deleted before them;
- move what they would delete into a trash directory inside the work
  directory (a rename frees no inode) and empty it when they finish;
- move an old work directory aside instead of deleting it first.

Journaled ext4 and other file systems do not skip recently freed inodes; the
steps above change nothing there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


class Scratch:
    """A benchmark's work directory, with a trash that is emptied at the end."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self._trash = work / ".trash"
        self._count = 0
        self._old: list[Path] = []
        if work.exists() or work.is_symlink():
            old = work.with_name(f"{work.name}.old-{os.getpid()}")
            os.rename(work, old)
            self._old.append(old)
        work.mkdir(parents=True)
        self.spread(work)

    @staticmethod
    def spread(directory: Path) -> None:
        """Ask ext4 to place ``directory``'s subdirectories in other block groups (best effort)."""
        chattr = shutil.which("chattr")
        if chattr:
            subprocess.run([chattr, "+T", str(directory)], capture_output=True, check=False)

    def discard(self, path: Path) -> None:
        """Move ``path`` (inside the work directory) into the trash, if it exists."""
        if not (path.exists() or path.is_symlink()):
            return
        self._trash.mkdir(exist_ok=True)
        self._count += 1
        os.rename(path, self._trash / str(self._count))

    def empty(self, *, keep_work: bool = False) -> None:
        """Delete the trash and old work directories (and the work directory unless kept)."""
        shutil.rmtree(self._trash, ignore_errors=True)
        for old in self._old:
            shutil.rmtree(old, ignore_errors=True)
        if not keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
