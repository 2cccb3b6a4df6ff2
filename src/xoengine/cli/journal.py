"""Journal verbs of the CLI: ``demo`` and ``journal verify|log|copy``.

Room: edge. PATH may be a journal directory or an engine state directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import uuid
from typing import TYPE_CHECKING, Any, Final

from xoengine import codec
from xoengine.cli.output import json_text, shown
from xoengine.datastore import has_journal, open_store
from xoengine.errors import (
    ConfigurationError,
    FrameError,
    JournalDamagedError,
    JournalUnreadableError,
    XoError,
)
from xoengine.journal import (
    BlobTable,
    Damage,
    JournalRecord,
    LMDBApplicationRecorder,
    applications,
    datetime_ns,
    iso_time,
    read_iso_time,
    verify,
)
from xoengine.tree import UndoLog

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from xoengine.datastore import Store

EXIT_DAMAGE = 4


_FINER_THAN_MICROSECONDS: Final = re.compile(r"[.,]\d{6}(\d+)")


def refuse_finer_than_microseconds(text: str) -> None:
    """Refuse a time finer than a microsecond (``stat``'s nanoseconds), never cut it.

    Times are resolved to the microsecond (a time names the last nanosecond of
    its microsecond): cut, it would name a later instant and show changes made
    after the one asked about.
    """
    finer = _FINER_THAN_MICROSECONDS.search(text)
    if finer is not None and finer.group(1).strip("0"):
        raise ConfigurationError(
            detail=f"{text!r} is finer than a microsecond, the resolution of times here: "
            "give at most 6 fractional digits (a time names its microsecond up to its "
            "last nanosecond), or a position (`xoengine journal log` lists them with "
            "their times)"
        )


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time with its UTC offset from the command line, to the microsecond.

    A time without an offset is refused, as the API refuses a naive datetime:
    read as UTC, or in this machine's zone, it names another instant for whoever
    typed it in another zone (the journal may come from another machine), by
    hours, and silently: an instant "just before the attack" inside it.
    """
    refuse_finer_than_microseconds(text)
    stamp = read_iso_time(text)
    if stamp is None:
        raise ConfigurationError(detail=f"{text!r} is not an ISO 8601 time")
    if stamp.utcoffset() is None:
        form = text.strip()
        if "T" not in form.upper() and " " not in form:  # a date alone: its midnight
            form += "T00:00"
        raise ConfigurationError(
            detail=f"{text!r} has no UTC offset: give it one ({form}Z for UTC, or "
            f"{form}+01:00 ...); without it the time names another instant in each zone"
        )
    return stamp


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return {"bytes": len(raw), "head": raw[:16].hex()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _decoded(state: bytes) -> Any:
    """An event's state (msgpack or JSON) as JSON takes it (bytes: size and head); else None."""
    try:
        decoded: Any = codec.unpack(state)
    except XoError:
        try:
            decoded = json.loads(state)
        except (ValueError, UnicodeDecodeError):
            return None
    return _jsonable(decoded)


def summarize_state(state: bytes, limit: int = 100) -> str:
    """A short human summary of an event's state (msgpack or JSON), else its size."""
    decoded = _decoded(state)
    if decoded is None:
        return f"<{len(state)} bytes>"
    if isinstance(decoded, dict):
        parts = [
            f"{k}={_jsonable(v)!r}"
            for k, v in decoded.items()
            if k not in {"timestamp", "originator_topic"}
        ]
        text = " ".join(parts)
    else:
        text = repr(_jsonable(decoded))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_dict(app: str, record: JournalRecord) -> dict[str, Any]:
    return {
        "application": app,
        "position": record.id,
        "time": iso_time(record.time_ns),
        "topic": record.topic,
        "originator": str(record.originator_id),
        "version": record.originator_version,
        "summary": summarize_state(record.state),
        "state": _decoded(record.state),  # every field, names whole (--json)
    }


# -- verbs -------------------------------------------------------------------------------


_VERIFY_HERE: Final = "XOENGINE_VERIFY_HERE"
"""Set in the child process that ``journal verify`` runs the check in."""

_DAMAGE_SIGNALS: Final = (signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS)


def _this_import_path() -> str:
    """PYTHONPATH for a child that must import this xoengine (not another one installed)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))


def cmd_verify(args: argparse.Namespace) -> int:
    """``journal verify``: scan everything; non-zero exit on damage.

    The check runs in a child process. On some damage that its own checks do
    not see (a torn copy's B-tree pages), LMDB stops the process with an
    assertion: the tool that says "damaged" must still say so then (E4005).
    """
    if os.environ.get(_VERIFY_HERE) != "1":
        argv = [sys.executable, "-m", "xoengine", "journal", "verify", args.path]
        child = subprocess.run(  # noqa: S603 (this program, the path it was given)
            [*argv, "--json"] if args.json else argv,
            env={**os.environ, _VERIFY_HERE: "1", "PYTHONPATH": _this_import_path()},
            capture_output=True,  # handed on: a caller in this process may redirect its own
            text=True,
            errors="surrogateescape",
            check=False,
        )
        sys.stdout.write(child.stdout)
        sys.stderr.write(child.stderr)
        if child.returncode >= 0:
            return child.returncode
        stopped = signal.Signals(-child.returncode)
        if stopped not in _DAMAGE_SIGNALS:
            return 128 + stopped.value  # stopped from outside, as a shell says it
        raise JournalDamagedError(
            path=args.path,
            detail=f"LMDB stopped the check ({stopped.name}) on pages that are not what it "
            "wrote: a torn copy (made with cp, tar or rsync while a writer ran)?",
        )
    store = open_store(args.path, readonly=True)
    try:
        report = verify(store)
        undo = tuple(_undo_damage(store, report.tables))
    finally:
        store.close()
    report = dataclasses.replace(report, damage=report.damage + undo)
    if args.json:
        print(
            json.dumps(
                {
                    "path": args.path,
                    "ok": report.ok,
                    "records": report.records,
                    "tables": report.tables,
                    "damage": [d.__dict__ for d in report.damage],
                },
                indent=2,
            )
        )
    else:
        for name, count in sorted(report.tables.items()):
            print(f"{name:40} {count:>10} records")
        for d in report.damage:
            print(f"DAMAGE {d.code} {d.table} at {d.position}: {d.message}")
        verdict = "OK" if report.ok else f"DAMAGED ({len(report.damage)} records)"
        print(f"{report.records} records in {len(report.tables)} tables verified: {verdict}")
    return 0 if report.ok else EXIT_DAMAGE


def _undo_damage(store: Store, tables: Iterable[str]) -> Iterator[Damage]:
    """Where each replica's undo log and the counts of its own blobs disagree."""
    for name in tables:
        if name.endswith(".undo"):
            undo = UndoLog(store, name.removesuffix(".undo"))
            try:
                problems = undo.check()
            except FrameError:
                continue  # a damaged record: reported by ``verify`` already
            for problem in problems:
                yield Damage(undo.refs_table, "refs", FrameError.code, problem)


def cmd_log(args: argparse.Namespace) -> int:
    """``journal log``: one line per event, filtered."""
    store = open_store(args.path, readonly=True)
    # Exact nanoseconds by the journal's one rule (a float timestamp would round).
    # A bound names a whole microsecond (the log prints labels to the microsecond):
    # --since from its first nanosecond, --until to its last.
    since = datetime_ns(parse_time(args.since)) - 999 if args.since else None
    until = datetime_ns(parse_time(args.until)) if args.until else None
    try:
        known = applications(store)
        if args.app and args.app not in known:  # a typo must not pass for "nothing there"
            raise ConfigurationError(
                detail=f"the journal holds no application {args.app!r} "
                f"(it holds: {', '.join(known) or 'none'})"
            )
        apps = [args.app] if args.app else known
        for app in apps:
            recorder = LMDBApplicationRecorder(store, prefix=app)
            last = recorder.max_notification_id() or 0
            for bound, value in (("--from", args.start), ("--to", args.stop)):
                if value is not None and not 0 <= value <= max(last, 1):
                    raise ConfigurationError(detail=f"{bound} {value} is outside 0..{last}")
            if args.start is not None and args.stop is not None and args.start > args.stop:
                raise ConfigurationError(detail="--from is after --to")
            # A whole topic (``module:Class``) reads the topic index; a class name alone
            # (``FileCreated``, ``Aggregate.Event``) is matched against every record's.
            whole = args.topic if args.topic and ":" in args.topic else None
            topics = [whole] if whole else []
            for record in recorder.records(args.start, stop=args.stop, topics=topics):
                if args.topic and not whole and not _names_class(record.topic, args.topic):
                    continue
                if args.originator and str(record.originator_id) != args.originator:
                    continue
                if since is not None and record.time_ns < since:
                    continue
                if until is not None and record.time_ns > until:
                    continue
                row = _record_dict(app, record)
                if args.json:
                    print(json_text(row))
                else:
                    print(
                        f"{row['position']:>8}  {row['time']}  {row['topic']}  "
                        f"{row['originator']} v{row['version']}  {shown(row['summary'])}"
                    )
    finally:
        store.close()
    return 0


def _names_class(topic: str, name: str) -> bool:
    """Whether ``topic`` (``module:Qual.Name``) is of the class ``name`` (or ``Qual.Name``)."""
    qualname = topic.partition(":")[2]
    return name in {topic, qualname} or qualname.endswith("." + name)


def cmd_copy(args: argparse.Namespace) -> int:
    """``journal copy``: consistent hot copy, then verify the copy."""
    source = open_store(args.src, readonly=True)
    try:
        source.copy_to(args.dst, compact=True)
    finally:
        source.close()
    copy = open_store(args.dst, readonly=True)
    try:
        report = verify(copy)
    finally:
        copy.close()
    print(
        f"copied {shown(args.src)} -> {shown(args.dst)}: {report.records} records, "
        f"{'verified OK' if report.ok else 'DAMAGED'}"
    )
    return 0 if report.ok else EXIT_DAMAGE


def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: write events through an eventsourcing Application, verify, print the log."""
    from eventsourcing.application import Application  # noqa: PLC0415 (54 ms import; demo only)
    from eventsourcing.domain import Aggregate, event  # noqa: PLC0415

    class Document(Aggregate):
        @event("Created")
        def __init__(self, name: str) -> None:
            self.name = name
            self.size = 0

        @event("Written")
        def write(self, offset: int, length: int, blob: bytes) -> None:
            self.size = max(self.size, offset + length)
            self.last_blob = blob

    state_dir = args.dir or tempfile.mkdtemp(prefix="xoengine-demo-")
    app = Application[uuid.UUID](
        env={
            "PERSISTENCE_MODULE": "xoengine.journal",
            "LMDB_PATH": state_dir,
            "LMDB_DURABILITY": "sync",
        }
    )
    try:
        store = app.factory.datastore  # type: ignore[attr-defined]
        blobs = BlobTable(store)
        doc = Document(name="db/file.bin")
        first = b""
        for i in range(5):
            blob_id = blobs.save(bytes([65 + i]) * 4096)
            first = first or blob_id
            doc.write(offset=i * 4096, length=4096, blob=blob_id)
        app.save(doc)
        again = blobs.save(b"A" * 4096)  # identical bytes are stored once, same id
        print(f"journal: {state_dir}")
        print(
            f"appended {doc.version} events for {doc.name} ({doc.size} bytes written); "
            f"identical block stored once: {again == first}"
        )
    finally:
        app.close()
    status = cmd_verify(argparse.Namespace(path=state_dir, json=False))
    cmd_log(
        argparse.Namespace(
            path=state_dir,
            app=None,
            topic=None,
            start=1,
            stop=None,
            originator=None,
            since=None,
            until=None,
            json=False,
        )
    )
    return status


# -- parser ------------------------------------------------------------------------------


def add_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``demo`` and ``journal verify|log|copy`` to the CLI."""
    demo = verbs.add_parser("demo", help="write events, verify, print the log")
    demo.add_argument("--dir", help="state directory (default: a new temporary one)")
    demo.set_defaults(func=cmd_demo)

    journal = verbs.add_parser("journal", help="inspect, verify and copy journals")
    jverbs = journal.add_subparsers(dest="journal_verb", required=True)

    v = jverbs.add_parser("verify", help="check every record; exit 4 on damage")
    v.add_argument("path", type=journal_path)
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    log = jverbs.add_parser("log", help="list events")
    log.add_argument("path", type=journal_path)
    log.add_argument("--app", help="application (prefix); default: all")
    log.add_argument(
        "--topic", help="only this event topic (module:Class, or the class name alone)"
    )
    log.add_argument("--originator", help="only this originator id")
    log.add_argument("--from", dest="start", type=int, default=1, help="first position")
    log.add_argument("--to", dest="stop", type=int, default=None, help="last position")
    log.add_argument("--since", help="ISO 8601 time with its UTC offset (Z, +01:00)")
    log.add_argument("--until", help="ISO 8601 time with its UTC offset (Z, +01:00)")
    log.add_argument("--json", action="store_true", help="one JSON object per line")
    log.set_defaults(func=cmd_log)

    copy = jverbs.add_parser("copy", help="consistent hot copy of a live journal")
    copy.add_argument("src", type=journal_path)
    copy.add_argument("dst")
    copy.set_defaults(func=cmd_copy)


def journal_path(text: str) -> str:
    """A journal directory, or an engine state directory holding one in ``journal/``."""
    inner = os.path.join(text, "journal")
    try:
        if has_journal(inner):
            return inner
    except JournalUnreadableError:
        return inner  # said (coded) when the verb opens it, not as a parse error
    return text
