"""The ``xoengine`` command line: a thin shell over the library.

Room: edge. May import everything below it; nothing imports it.

Verbs::

    xoengine quickstart [--dir DIR]            the main job: a whole replication round trip
    xoengine demo [--dir DIR]                  journal demo: write events, verify, print the log
    xoengine journal verify|log|copy ...       inspect, check and hot-copy a journal
    xoengine scenario create|list|show|remove  define scenarios in a state directory
    xoengine adopt STATE                       make a copied state directory the live one
    xoengine start|stop|capture|wait|sync|suspend|resume|stats|report STATE NAME ...
    xoengine replay|cat|history|diff|bisect STATE NAME ...   forensics from the journal alone
    xoengine rewind|rewind-points|difference STATE NAME ...

Exit codes: 0 success, 2 usage/configuration, 3 storage or replication, 4 damage found.
SIGTERM (``docker stop``, systemd) interrupts a verb as Ctrl-C does: what it was
writing is cleaned up the same way (a replay removes its partial tree), then the
process ends by that signal, as after Ctrl-C (a shell shows 143; 130 for Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from xoengine.cli import forensic, journal, scenario
from xoengine.errors import DiskFullError, XoError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from types import FrameType

__all__ = ["Terminated", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="xoengine", description=(__doc__ or "").splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    scenario.add_parsers(verbs)
    forensic.add_parsers(verbs)
    journal.add_parsers(verbs)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be: the same cleanup runs."""


@contextlib.contextmanager
def _interrupts_once() -> Iterator[None]:
    """While a verb runs, SIGTERM raises :class:`Terminated` and Ctrl-C KeyboardInterrupt, once.

    A second signal while the first one's cleanup runs (a replay removing its
    partial tree) is ignored, so the cleanup is not cut short; ``start
    --watch`` sets its own handlers while it watches. SIGINT is only taken
    where Python's own handler is in place (not where it is ignored, as in
    a shell's background job). Only from the main thread (where Python runs
    signal handlers); the previous handlers are back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def interrupt(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        del frame
        if not raised:
            raised = True
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt

    taken = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        taken.append(signal.SIGINT)
    previous: dict[int, Any] = {signum: signal.signal(signum, interrupt) for signum in taken}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _terminated() -> int:
    """End the process by SIGTERM, as Python ends it by SIGINT after Ctrl-C (else: 143).

    The parent sees the signal, not an error status: systemd counts a service
    ended by SIGTERM as stopped, and a shell shows 143 (130 after Ctrl-C).
    """
    return _end_by(signal.SIGTERM, "stopped by SIGTERM")


def _interrupted() -> int:
    """End the process by SIGINT after Ctrl-C, as Python does, without its traceback (130)."""
    return _end_by(signal.SIGINT, "interrupted")


def _end_by(signum: signal.Signals, said: str) -> int:
    """Say why on stderr, then end by ``signum`` where its handler is the default (else 128+N).

    A verb's cleanup has run by then (a replay removed its partial tree). A
    program that runs :func:`main` with its own handler gets the status back.
    """
    with contextlib.suppress(OSError, ValueError):
        print(f"xoengine: {said}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    # The handler in place again decides: by default the process ends here.
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signum) in (
        signal.SIG_DFL,
        signal.default_int_handler,
    ):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return 128 + signum


def _coded(e: XoError) -> int:
    """Print a coded error's code, message and hint; its exit status."""
    with contextlib.suppress(OSError):
        print(f"error {e.code}: {e.message}\nhint: {e.hint}", file=sys.stderr)
    return e.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; coded errors print their code, message and hint.

    SIGTERM stops a verb as Ctrl-C does (its cleanup runs), then ends the
    process by that signal (:func:`_terminated`).
    """
    args = build_parser().parse_args(argv)
    try:
        with _interrupts_once():
            status = int(args.func(args))
            sys.stdout.flush()  # a full volume found here, not as the interpreter ends
            return status
    except XoError as e:
        return _coded(e)
    except BrokenPipeError:  # `xoengine journal log | head`
        return 0
    except OSError as e:
        if e.errno not in {errno.ENOSPC, errno.EDQUOT}:
            raise
        # The standard output on a full volume (`xoengine cat ... > file`): what is
        # there is part of the answer only; the rest is dropped, not retried at exit.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _coded(
            DiskFullError(
                path=e.filename or "the standard output",
                detail="the output was not written whole: what was written is a part only",
            )
        )
    except Terminated:
        return _terminated()
    except KeyboardInterrupt:
        return _interrupted()
