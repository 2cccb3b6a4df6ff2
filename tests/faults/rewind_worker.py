"""Child process of test_rewind_crash.py: rewind a replica until killed.

Usage: rewind_worker.py STATE SCENARIO REPLICA (POINT | --open-only) [DIE_AT_RENAME]

Opens the engine in STATE with ``durability="sync"`` (which completes any
interrupted rewind) and, unless ``--open-only``, rewinds REPLICA to the rewind
point named POINT. Prints ``OPENING`` before the open, ``READY`` once the
engine is open, ``U`` after every before-image it has undone (one write(2)
each, so the parent can kill it after a chosen number of them; a path of a
coalesced run reports one per record it stands for, once written), and ``DONE``
at the end. With DIE_AT_RENAME = N it kills itself (SIGKILL) just before the
N-th rename of a temporary file into place: a whole-file write (``replace``)
interrupted with its temporary file written and fsynced. With the environment
variable ``DIE_AFTER_UNDO`` = N it kills itself right after reporting the N-th
undone before-image: before that group's commit, at a chosen record.
"""

from __future__ import annotations

import os
import signal
import sys

import xoengine.rewind as rewind_module
from xoengine.engine import Engine
from xoengine.tree import TMP_PREFIX


def say(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def main() -> None:
    state, scenario, replica, point = sys.argv[1:5]
    undo_one = rewind_module.undo_one
    reported = [0]
    die_after = int(os.environ.get("DIE_AFTER_UNDO", "0"))

    def say_undone() -> None:
        say("U")
        reported[0] += 1
        if reported[0] == die_after:
            say("DYING")
            os.kill(os.getpid(), signal.SIGKILL)

    def reporting_undo_one(*args: object, **kwargs: object) -> None:
        undo_one(*args, **kwargs)  # type: ignore[arg-type]
        say_undone()

    rewind_module.undo_one = reporting_undo_one  # type: ignore[assignment]
    undo_path = rewind_module.undo_path

    def reporting_undo_path(*args: object, **kwargs: object) -> None:
        undo_path(*args, **kwargs)  # type: ignore[arg-type]
        for _ in range(args[1].records):  # type: ignore[attr-defined]  # one per record
            say_undone()

    rewind_module.undo_path = reporting_undo_path  # type: ignore[assignment]
    if len(sys.argv) > 5:
        countdown = [int(sys.argv[5])]
        rename = os.rename

        def dying_rename(src: str, dst: str, **kwargs: int) -> None:
            if isinstance(src, str) and src.startswith(TMP_PREFIX):
                countdown[0] -= 1
                if countdown[0] <= 0:
                    say("DYING")
                    os.kill(os.getpid(), signal.SIGKILL)
            rename(src, dst, **kwargs)

        os.rename = dying_rename  # type: ignore[assignment]
    say("OPENING")
    eng = Engine.open(state, durability="sync")
    say("READY")
    if point != "--open-only":
        eng.scenario(scenario).rewind(replica, point)
    eng.close()
    say("DONE")


if __name__ == "__main__":
    main()
