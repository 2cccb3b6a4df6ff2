"""Forensic and rewind verbs: replay, history, diff, bisect, rewind, rewind-points, difference.

Room: edge. ``replay``, ``history``, ``diff`` and ``bisect`` open the journal
read-only (a state directory or a bare journal copy from another machine)
and need nothing else. An instant on the command line is a number (a
position), else a rewind point name of the scenario, else an ISO 8601 time
with its UTC offset (one without it is refused: see ``parse_time``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import hashlib
import math
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from xoengine import codec
from xoengine.cli.daemon import run_or_ask
from xoengine.cli.journal import parse_time, refuse_finer_than_microseconds
from xoengine.cli.output import json_text, plain, shown
from xoengine.cli.scenario import _engine, _show
from xoengine.engine import Engine, Instant
from xoengine.errors import ConfigurationError, DiskFullError, OutputLocationError, XoError
from xoengine.forensic import BURST_WINDOW_S, CONTENT_CHANGES, HistoryEntry
from xoengine.journal import datetime_ns, iso_time, read_iso_time
from xoengine.tree import TMP_PREFIX, copy_sparse

if TYPE_CHECKING:
    from collections.abc import Callable


def _instant(eng: Engine, scenario: str, text: str | None) -> Instant | None:
    """An instant from the command line (see the module's docstring)."""
    if text is None:
        return None
    if text.isascii() and text.isdigit():  # not "²": a digit to isdigit, not to int
        return int(text)
    point: int | None = None
    with contextlib.suppress(XoError):  # no such scenario (removed) or no such point
        point = eng.instant(scenario, text)
    if point is None:
        refuse_finer_than_microseconds(text)  # a time, too fine to take: said as such
    is_time = read_iso_time(text) is not None
    if point is not None and is_time:  # a point named so before such names were refused
        raise ConfigurationError(
            detail=f"{text!r} is both a rewind point of {scenario} (position {point}) and an "
            "ISO 8601 time: give the point's position, or the time with its UTC offset"
        )
    if point is not None:
        return point
    if is_time:
        return parse_time(text)  # or why it takes no such time (no offset)
    raise ConfigurationError(
        detail=f"{text!r} is neither a position, a rewind point of {scenario}, nor an ISO 8601 time"
    )


def _position_or_time(
    eng: Engine, scenario: str, position: int | None, at: str | None
) -> tuple[int | None, dt.datetime | None]:
    """``--position`` and ``--at`` as the engine takes them.

    ``--at`` is read as every verb reads an instant (a position, a rewind point's
    name or a time): one text names one instant whichever verb is given it.
    """
    instant = _instant(eng, scenario, at)
    if isinstance(instant, dt.datetime):
        return position, instant
    if not isinstance(instant, int):  # none given (a point is read as its position)
        return position, None
    if position is not None:
        raise ConfigurationError(detail="give --position or --at, not both")
    return instant, None


def _before_history(eng: Engine, scenario: str, instant: Instant | None, text: str | None) -> None:
    """Note on stderr a time the journal cannot answer for in full.

    Before the scenario's first change, the rule (the last position labelled
    at or before it) gives a position where the journal knows nothing of the
    tree: an empty answer then says nothing about what the master held. While
    the scenario was stopped, nothing captured its master: the answer is the
    tree as of the stop. While the clock stood behind the journal (AW0006),
    commits shared one label: a time there names the last of them. After the
    journal's last record while the scenario ran (a copy, a writer gone), the
    journal cannot say what the master held.
    """
    if not isinstance(instant, dt.datetime):
        return
    position = eng.instant(scenario, instant)
    first = next(iter(eng.file_events(scenario, None)), None)
    if first is None or first[0] <= position:
        stop = eng.stopped_at(scenario, position)
        if stop is not None:
            print(
                f"note: {scenario} was stopped at {text} (since position {stop[0]}, "
                f"{iso_time(stop[1])}): the answer is its tree as journaled then; changes made "
                "to the master while it was stopped were not captured",
                file=sys.stderr,
            )
        last = eng.last_position()
        asked = datetime_ns(instant) - 999  # the microsecond asked begins after the last
        if stop is None and position == last and asked > (end := eng.recorder.time_of(last)):
            print(
                f"note: {text} is after the journal's last record (position {last}, "
                f"{iso_time(end)}) while {scenario} was running: the answer is its tree "
                "as journaled then; what the master held later is not in this journal "
                "(a copy taken then, or a writer that stopped writing)",
                file=sys.stderr,
            )
        behind = eng.clock_behind(scenario, position)
        if behind is not None:
            label = iso_time(eng.recorder.time_of(position))
            print(
                f"note: {text} names position {position}, the end of a span of commits all "
                f"labelled {label}: the clock stood {behind[1]} s behind the journal then "
                f"(AW0006 at position {behind[0]}); positions tell the span's changes apart "
                "(`history`, `xoengine journal log`)",
                file=sys.stderr,
            )
        return
    print(
        f"note: {text} names position {position}, before the first change the journal holds "
        f"for {scenario} (position {first[0]}, {iso_time(first[1])}): the journal knows nothing "
        "of its tree then",
        file=sys.stderr,
    )


def _fingerprint(value_hex: str) -> str:
    """Eight hex digits of an extended attribute's value (``--json`` has the value)."""
    return f"{codec.digest64(bytes.fromhex(value_hex)):016x}"[:8]


def _inside_commit(eng: Engine, position: int | None) -> None:
    """Note on stderr a position before its commit's last: a step of that commit.

    Such a state (a file made, its content not yet written) may never have been
    the master's; ``cat`` says so in its summary, ``replay`` and ``diff`` here.
    """
    if position is None or not 0 < position <= eng.last_position():
        return
    end = eng.recorder.position_at(eng.recorder.time_of(position))
    if end != position:
        print(
            f"note: position {position} shares its time label with later positions, up to "
            f"{end} (the positions of one commit share its label, and so do commits made "
            "while the clock stood behind the last label): inside a commit, the tree may be "
            "one the master never held, such as a file made before its content",
            file=sys.stderr,
        )


def _check_output(eng: Engine, out: str | None, scratch: str | None) -> None:
    """Refuse ``cat``'s output file and scratch directory before any work is done."""
    if out is not None:
        eng.check_output_place(out, "write the output to")
        if os.path.lexists(out):  # evidence may be there: never written over
            raise OutputLocationError(
                action="write the output to", path=out, detail="it exists already"
            )
        parent = os.path.dirname(out) or "."
        if not os.path.isdir(parent):
            raise OutputLocationError(
                action="write the output to", path=out, detail=f"{parent} is not a directory"
            )
    if scratch is not None and not (
        os.path.isdir(scratch) and os.access(scratch, os.W_OK | os.X_OK)
    ):
        raise OutputLocationError(
            action="replay into the scratch directory",
            path=scratch,
            detail="it is not a directory this process may write in",
        )


def _write_out(source: BinaryIO, out: str, digest: hashlib._Hash) -> int:
    """Copy ``source`` into the new file ``out``; a failed or interrupted copy leaves no file.

    Its holes stay holes (a thin disk image is not written out whole). The
    bytes go to a reserved name beside ``out`` first, which gets the name
    ``out`` once whole (a hard link: never over a file that appeared there):
    a copy killed outright (-9) leaves no ``out`` holding part of them.
    """
    if os.path.lexists(out):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), out)
    head, tail = os.path.split(out)
    partial = os.path.join(head, f"{TMP_PREFIX}cat-{os.getpid()}-{tail}"[:255])
    opened = False
    try:
        with open(partial, "xb") as sink:
            opened = True
            copy_sparse(source.fileno(), sink.fileno())
            source.seek(0)
            copied = _copy(source, None, digest)
        try:
            os.link(partial, out)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK) or os.path.lexists(out):
                raise
            os.rename(partial, out)  # a file system without hard links
        else:
            os.unlink(partial)
    except BaseException as e:
        if opened:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        if not isinstance(e, OSError):
            raise  # Ctrl-C, SIGTERM (the CLI's Terminated): cleaned up, as a replay is
        if e.errno == errno.ENOSPC:
            raise DiskFullError(path=out, detail="the output was not written") from e
        raise OutputLocationError(action="write the output to", path=out, detail=e.strerror) from e
    return copied


def cmd_cat(args: argparse.Namespace) -> int:
    """``cat``: the bytes one file held at an instant, to stdout or ``--out``.

    A summary on stderr (a line, or with ``--json`` a JSON object) says which
    position that was, the bytes' SHA-256, and the changes that bound them:
    since when the path held them and what changed them next. The bytes on
    stdout stay exactly the file's.
    """
    with Engine.open(args.state, readonly=True) as eng:
        _check_output(eng, args.out, args.scratch)
        instant = _instant(eng, args.name, args.at)
        _before_history(eng, args.name, instant, args.at)
        position = eng.instant(args.name, instant)
        digest = hashlib.sha256()
        with eng.file_at(args.name, args.path, position, scratch=args.scratch) as source:
            if args.out:
                copied = _write_out(source, args.out, digest)
            else:
                copied = _copy(source, sys.stdout.buffer, digest)
                sys.stdout.buffer.flush()
        held = eng.held(args.name, args.path, position)
        label = eng.recorder.time_of(position)
        # A commit's positions share its label; one before its last is a step of it
        # (a creation before its content): what a time names is the commit's end.
        commit_end = eng.recorder.position_at(label)
        when = iso_time(label)
    if args.json:
        summary = {
            "path": args.path,
            "position": position,
            "time": when,
            "commit_end": commit_end,
            "bytes": copied,
            "sha256": digest.hexdigest(),
            "since": held.since,
            "until": held.until,
        }
        print(json_text(plain(summary), indent=2), file=sys.stderr)
        return 0
    until = held.until
    print(
        f"{shown(args.path)} at position {position} ({when}): {copied} bytes, "
        f"sha256 {digest.hexdigest()}\n"
        f"  held since position {held.since.position} ({held.since.time}, "
        f"{held.since.operation}{_mtime(held.since)})\n"
        + (
            f"  until position {until.position} ({until.time}, {until.operation})"
            if until is not None
            else "  unchanged to the journal's end"
        )
        + (
            f"\n  position {position} shares its time label with later positions, up to "
            f"{commit_end}, which that time names (the positions of one commit share its "
            "label, and so do commits made while the clock stood behind the last label)"
            if commit_end != position
            else ""
        ),
        file=sys.stderr,
    )
    return 0


def _mtime(entry: HistoryEntry) -> str:
    return "" if entry.mtime is None else f", mtime {entry.mtime}"


def _copy(source: BinaryIO, sink: BinaryIO | None, digest: hashlib._Hash) -> int:
    """Hash ``source`` (and write it to ``sink``); its size."""
    copied = 0
    while chunk := source.read(1 << 20):
        if sink is not None:
            sink.write(chunk)
        digest.update(chunk)
        copied += len(chunk)
    return copied


def _progress(what: str) -> Callable[[int, int], None] | None:
    """A reporter for a long rewind or replay: a line on stderr at most every 2 s, on a terminal."""
    if not sys.stderr.isatty():
        return None
    last = time.monotonic()

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= _PROGRESS_EVERY_S or done == total:
            last = now
            print(f"{what}: {done} of {total}", file=sys.stderr, flush=True)

    return report


_PROGRESS_EVERY_S: Final = 2.0
_NO_VERDICT: Final = 126
"""Exit statuses from here up say the bisect command did not run or died (as git bisect)."""


def cmd_replay(args: argparse.Namespace) -> int:
    """``replay``: rebuild a tree, subtree or file as it was (never inside a tree it names)."""
    with Engine.open(args.state, readonly=True) as eng:
        position, at = _position_or_time(eng, args.name, args.position, args.at)
        _before_history(eng, args.name, at, args.at)
        _inside_commit(eng, position)
        result = eng.replay(
            args.name,
            to=args.to,
            position=position,
            at=at,
            point=args.point,
            path=args.path,
            progress=_progress("entries written"),
        )
        _show(result, as_json=args.json)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    """``history``: every change to a path."""
    with Engine.open(args.state, readonly=True) as eng:
        entries = eng.history(args.name, args.path)
    if args.json:
        _show(entries, as_json=True)
    else:
        owners: dict[str, list[int]] = {}  # the last owner shown, per file identity
        for e in entries:
            extra = f" -> {shown(e.new_path)}" if e.new_path else ""
            if e.moved_with:
                extra += f" (directory {shown(e.moved_with)})"
            if e.target is not None:
                extra += f" (symlink to {shown(e.target)})"
            meta = e.changed  # a metadata entry shows what it moved
            if e.mode is not None and e.target is None and (meta is None or "mode" in meta):
                extra += f" mode={e.mode:04o}"
            if e.owner is not None and owners.get(e.file_id) != e.owner:
                owners[e.file_id] = e.owner  # shown where it is first known, and changes
                extra += f" owner={e.owner[0]}:{e.owner[1]}"
            if e.xattrs is not None:  # each value by a fingerprint: a change of one shows
                marks = [f"{shown(name)}#{_fingerprint(value)}" for name, value in e.xattrs.items()]
                extra += f" xattrs={','.join(marks) or '(none)'}"
            ranges = " ".join(f"{o}+{n}" for o, n in e.ranges)
            size = "" if e.size is None else f" size={e.size}"
            if e.mtime is not None and (
                e.operation == "created"
                or e.operation in CONTENT_CHANGES
                or "mtime" in (meta or [])
            ):
                size += f" mtime={e.mtime}"
            if meta == []:
                size += " (ctime only)"
            line = f"{e.position:>8}  {e.time}  {e.operation:<9} {shown(e.path)}{extra}{size}"
            print(f"{line}  {ranges}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    """``diff``: what changed between two instants (positions, rewind points or times)."""
    with Engine.open(args.state, readonly=True) as eng:
        start = _instant(eng, args.name, args.from_)
        assert start is not None
        end = _instant(eng, args.name, args.to)
        _before_history(eng, args.name, start, args.from_)
        _before_history(eng, args.name, end, args.to)
        for instant in (start, end):
            _inside_commit(eng, instant if isinstance(instant, int) else None)
        result = eng.diff(args.name, start, end)
        _show(result, as_json=args.json)
    return 0


def cmd_bisect(args: argparse.Namespace) -> int:
    """``bisect``: last good position; the command's exit status says good (0) or bad.

    The command runs at the root of each probe's replay, with or without
    ``--path`` (which may name a file, absent at some probes): paths in it are
    relative to the tree's root. ``$XO_REPLAY_DIR`` is that root and
    ``$XO_REPLAY_PATH`` the replayed file or subtree (the root without ``--path``).
    What the command prints goes to stderr: stdout holds the answer alone
    (``--json`` stays parseable). As with ``git bisect run``, an exit status
    of 126 or more (not executable, not found, killed by a signal) is no
    verdict: the search stops with E1001 rather than call the probe bad.
    """

    def predicate(replayed: str) -> bool:
        root = replayed
        if args.path:  # the library hands over root/path: run at the root
            root = replayed[: len(replayed) - len(args.path)].rstrip(os.sep)
            assert os.path.join(root, args.path) == replayed
        env = {**os.environ, "XO_REPLAY_DIR": root, "XO_REPLAY_PATH": replayed}
        status = _run_probe(args.command, root, env, args.probe_timeout)
        if status < 0:  # the shell itself was killed
            raise ConfigurationError(
                detail=f"the command {args.command!r} gave no verdict: it (or its shell) was "
                f"killed by signal {-status} ({_signal_name(-status)})"
            )
        if status >= _NO_VERDICT:
            raise ConfigurationError(
                detail=f"the command {args.command!r} gave no verdict: exit status "
                f"{status} (126: not executable, 127: not found, 128+N: signal N)"
            )
        return status == 0

    limit = args.probe_timeout
    if limit is not None and not (math.isfinite(limit) and limit > 0):
        raise ConfigurationError(detail=f"--probe-timeout is seconds above 0, not {limit:g}")
    with Engine.open(args.state, readonly=True) as eng:
        good = _instant(eng, args.name, args.good)
        bad = _instant(eng, args.name, args.bad)
        _before_history(eng, args.name, good, args.good)
        _before_history(eng, args.name, bad, args.bad)
        result = eng.bisect(
            args.name,
            predicate,
            path=args.path,
            between=None if good is None and bad is None else (0 if good is None else good, bad),
            burst_threshold=args.burst,
            burst_window=args.burst_window,
        )
        _show(result, as_json=args.json)
        if bad is not None and result.first_bad is None:
            print(
                f"note: the --bad bound {args.bad} tests good (position {result.last_good}): "
                "nothing bad was found up to it; give a later bound, or none (the journal's end)",
                file=sys.stderr,
            )
        if result.burst_position is None:
            print(
                f"no burst: no {args.burst} files that were there changed within "
                f"{args.burst_window:g} s of each other (damage paced slower is not flagged: "
                "--burst-window widens the window; `diff` lists every change)",
                file=sys.stderr,
            )
        else:
            print(
                f"burst: {result.burst_files} files changed close together from position "
                f"{result.burst_position}; a heuristic for mass damage (ransomware), "
                "which a checkout, a build or an unpacked archive also trips",
                file=sys.stderr,
            )
            if result.first_bad is not None and result.burst_position <= result.last_good:
                print(
                    f"note: the burst's window starts at position {result.burst_position}, "
                    f"at or before the last good position {result.last_good}: it takes in "
                    "changes the command found good (a window reaches back up to "
                    f"{args.burst_window:g} s from the damage); what the command calls bad "
                    f"starts at position {result.first_bad}",
                    file=sys.stderr,
                )
            behind = eng.clock_behind(args.name, result.burst_position)
            if behind is not None:  # commits there share one label: time cannot part them
                print(
                    f"note: the burst lies where the clock stood {behind[1]} s behind the "
                    f"journal (AW0006 at position {behind[0]}): commits there share one time "
                    "label, so the burst may take in commits made long apart; its start and "
                    "files are an upper bound (`history`, `xoengine journal log` tell them apart)",
                    file=sys.stderr,
                )
    return 0


def _run_probe(command: str, root: str, env: dict[str, str], timeout: float | None) -> int:
    """Run the operator's command line at ``root``; its shell's exit status.

    Run as written (like ``git bisect run``), in a process group of its own,
    which is killed when the probe ends: normally, after ``timeout`` seconds
    (no verdict: E1001), or because bisect itself is stopped (Ctrl-C, SIGTERM
    from ``timeout`` or ``systemctl stop``). Nothing it started in that group
    runs on in a scratch tree that is gone (a process that makes a session of
    its own, ``setsid``, has left it). The group is killed while the shell is
    not yet reaped, so its id names no other group. Its output goes to our stderr,
    beside our messages, not in the answer; through no pipe, whose end a process
    left in the background would hold open.
    """
    sys.stderr.flush()
    process = subprocess.Popen(  # noqa: S602
        command, shell=True, cwd=root, env=env, stdout=2, start_new_session=True
    )
    try:
        if not _ended(process, timeout):
            raise ConfigurationError(
                detail=f"the command {command!r} gave no verdict within --probe-timeout "
                f"{timeout:g} s: it was killed"
            )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode


def _ended(process: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """Wait for ``process`` to end, not reaping it; False once ``timeout`` passed first.

    Through a pidfd (Linux 5.3 and later: a signal interrupts the wait); where
    there is none, by waiting for it, which reaps it.
    """
    try:
        waiting = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        ended, _, _ = select.select([waiting], [], [], timeout)
    finally:
        os.close(waiting)
    return bool(ended)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "an unknown signal"


def cmd_rewind(args: argparse.Namespace) -> int:
    """``rewind``: reset a replica to a point, position or time (it stays suspended).

    ``--dry-run`` opens the journal read-only and shows what the rewind would
    change on the replica, doing nothing.
    """
    if sum(x is not None for x in (args.point, args.position, args.at)) != 1:
        raise ConfigurationError(
            detail="give one of a rewind point (or position), --position or --at"
        )
    point, position = args.point, args.position
    if point is not None and point.isascii() and point.isdigit():  # as every verb reads one
        position = int(point)
        point = None

    def target(eng: Engine) -> dict[str, Any]:
        position_, at = _position_or_time(eng, args.name, position, args.at)
        _before_history(eng, args.name, at, args.at)  # a flat span: the rewind's too
        return {"position": position_, "at": at}

    if args.dry_run:
        with Engine.open(args.state, readonly=True) as eng:
            preview = eng.scenario(args.name).rewind_preview(args.replica, point, **target(eng))
            _show(preview, as_json=args.json)
        return 0
    with Engine.open(args.state, durability=args.durability) as eng:
        sc = eng.scenario(args.name)
        where = target(eng)
        was = sc.applied_position(args.replica)
        held = sc.rewind(args.replica, point, **where, progress=_progress("undo records undone"))
        result = {
            "replica": args.replica,
            "position": held,
            "time": iso_time(eng.recorder.time_of(held)) if held else None,
            "from_position": was,
            "suspended": True,
        }
        _show(result, as_json=args.json)
    if not args.json:
        print(
            f"{args.replica} stays out of replication at that state until "
            f"`xoengine resume {shlex.join([args.state, args.name, args.replica])}`, "
            "which resynchronizes it with the master",
            file=sys.stderr,
        )
    return 0


def cmd_points(args: argparse.Namespace) -> int:
    """``rewind-points``: list them; ``--set NAME`` adds one now."""
    if args.set is not None:  # "--set ''" is refused by the engine, not a listing
        run_or_ask(args.state, args.durability, args.name, {"verb": "point", "name": args.set})
    with _engine(args, readonly=True) as eng:
        points = eng.rewind_points(args.name)  # a removed scenario's too
        # Which replicas a rewind to each point still reaches (Scenario.reachable_by,
        # from the floors read once); none of a removed scenario's.
        live = args.name in {s.name for s in eng.scenarios()}
        floors = eng.scenario(args.name).rewind_floors() if live else {}
        rows: list[dict[str, Any]] = []
        for point in points:
            row = plain(point)
            row["time"] = iso_time(point.time_ns)
            row["reachable_by"] = [r for r, low in floors.items() if low <= point.position]
            rows.append(row)
        _show(rows, as_json=args.json)
    return 0


def cmd_difference(args: argparse.Namespace) -> int:
    """``difference``: master vs replica (pending changes; ``--verify`` hashes both trees)."""
    with _engine(args, readonly=True) as eng:
        _show(
            eng.scenario(args.name).difference_report(args.replica, verify=args.verify),
            as_json=args.json,
        )
    return 0


_INSTANT = "position, rewind point name or ISO time"


def add_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the forensic and rewind verbs."""

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("state", help="state directory or journal copy")
        parser.add_argument("name", help="scenario name")
        parser.add_argument("--json", action="store_true")
        parser.add_argument(
            "--durability", default="sync", choices=["sync", "metasync-off", "nosync"]
        )

    replay = verbs.add_parser("replay", help="rebuild a tree as it was, from the journal alone")
    common(replay)
    replay.add_argument("--to", required=True, help="output directory")
    replay.add_argument("--position", type=int)
    replay.add_argument("--at", help=_INSTANT)
    replay.add_argument("--point", help="rewind point name")
    replay.add_argument("--path", help="one file or subtree")
    replay.set_defaults(func=cmd_replay)

    cat = verbs.add_parser("cat", help="the bytes one file held at an instant")
    common(cat)
    cat.add_argument("path")
    cat.add_argument("--at", help=f"{_INSTANT} (default: the end)")
    cat.add_argument("--out", help="write to this file instead of stdout")
    cat.add_argument("--scratch", help="directory for the temporary replay (default: TMPDIR)")
    cat.set_defaults(func=cmd_cat)

    history = verbs.add_parser("history", help="every change to a path")
    common(history)
    history.add_argument("path")
    history.set_defaults(func=cmd_history)

    diff = verbs.add_parser("diff", help="changes between two instants")
    common(diff)
    diff.add_argument("from_", metavar="FROM", help=_INSTANT)
    diff.add_argument("to", nargs="?", help=f"{_INSTANT} (default: the end)")
    diff.set_defaults(func=cmd_diff)

    bisect = verbs.add_parser("bisect", help="find the last good position")
    common(bisect)
    bisect.add_argument("command", help="shell command run in the replayed tree; exit 0 = good")
    bisect.add_argument("--path", help="replay only this file or subtree")
    bisect.add_argument("--good", help=f"a known good instant: {_INSTANT} (default 0)")
    bisect.add_argument("--bad", help=f"a known bad instant: {_INSTANT} (default: the end)")
    bisect.add_argument(
        "--burst", type=int, default=10, help="files changed at once that flag a burst"
    )
    bisect.add_argument(
        "--probe-timeout",
        type=float,
        help="seconds a probe of the command may take (then no verdict: E1001; default: none)",
    )
    bisect.add_argument(
        "--burst-window",
        type=float,
        default=BURST_WINDOW_S,
        metavar="SECONDS",
        help=f"how close in time a burst's changes are (default {BURST_WINDOW_S:g}; 0: one commit)",
    )
    bisect.set_defaults(func=cmd_bisect)

    rewind = verbs.add_parser("rewind", help="reset a replica to an earlier state")
    common(rewind)
    rewind.add_argument("replica")
    rewind.add_argument("point", nargs="?", help="rewind point name, or a position")
    rewind.add_argument("--position", type=int)
    rewind.add_argument("--at", help=_INSTANT)
    rewind.add_argument(
        "--dry-run",
        action="store_true",
        help="show what the rewind would change on the replica (paths that come back, "
        "go, are renamed back, byte ranges put back); change nothing",
    )
    rewind.set_defaults(func=cmd_rewind)

    points = verbs.add_parser("rewind-points", help="list (or --set) rewind points")
    common(points)
    points.add_argument("--set", metavar="NAME", help="add a rewind point now")
    points.set_defaults(func=cmd_points)

    difference = verbs.add_parser("difference", help="difference report: master vs replica")
    common(difference)
    difference.add_argument("replica")
    difference.add_argument("--verify", action="store_true", help="hash both trees")
    difference.set_defaults(func=cmd_difference)
