"""Scenario verbs of the CLI and ``quickstart``, the main job.

Room: edge. A CLI process is short-lived: ``start`` synchronizes and records
that the scenario runs; ``capture`` journals changes and applies them to the
active replicas before it returns; ``start --watch`` keeps watching until
interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from xoengine.cli.daemon import POLL_S, Daemon, run_or_ask
from xoengine.cli.output import json_text, plain, shown
from xoengine.engine import Engine, Scenario
from xoengine.errors import ConfigurationError, ReplicaDivergedError
from xoengine.walk import walk


def _engine(args: argparse.Namespace, *, readonly: bool = False) -> Engine:
    """The engine of ``args.state``; read-only for verbs that only look.

    A writable engine is the journal's one writer from its open, so the verbs
    that only read (list, stats, report, rewind-points, difference) open it
    read-only: they run beside a running daemon (``start --watch``).
    """
    if readonly:
        return Engine.open(args.state, readonly=True)
    return Engine.open(args.state, durability=args.durability)


def _show(data: Any, *, as_json: bool, indent: str = "") -> None:
    if as_json:
        print(json_text(plain(data), indent=2))
        return
    value = plain(data)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                print(f"{indent}{shown(key)}:")
                _show(item, as_json=False, indent=indent + "  ")
            else:
                print(f"{indent}{shown(key)}: {_scalar(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                print(f"{indent}-")
                _show(item, as_json=False, indent=indent + "  ")
            else:
                print(f"{indent}- {_scalar(item)}")
    else:
        print(f"{indent}{_scalar(value)}")


def _scalar(value: Any) -> str:
    # A list inline is its repr: the strings in it are escaped already.
    return shown(value) if isinstance(value, str) else str(value)


def _describe(sc: Scenario) -> dict[str, Any]:
    return {
        "name": sc.name,
        "kind": sc.kind,
        "state": sc.state,
        "roots": sc.roots,
        "replicas": sc.replicas,
        "suspended": sorted(sc.suspended),
        "entities": [e["entity"] for e in sc.entities()],
        "options": sc.options,
    }


# -- verbs ------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    """``scenario create``."""
    replicas: dict[str, str | os.PathLike[str]] = {}
    for item in args.replica:
        name, sep, path = item.partition("=")
        if not sep:
            raise ConfigurationError(detail=f"--replica takes NAME=PATH, not {item!r}")
        replicas[name] = path
    options: dict[str, Any] = {}
    if args.include:
        options["include"] = args.include
    if args.exclude:
        options["exclude"] = args.exclude
    if args.spool_limit:
        options["spool_limit"] = args.spool_limit
    options.update(_options(args.option))
    with _engine(args) as eng:
        sc = eng.create_scenario(
            args.name, kind=args.kind, master=args.master, replicas=replicas, **options
        )
        _show(_describe(sc), as_json=args.json)
    return 0


def _options(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` options; a VALUE that parses as JSON (numbers, lists) is taken as such."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigurationError(detail=f"--option takes KEY=VALUE, not {item!r}")
        try:
            options[key] = json.loads(text)
        except ValueError:
            options[key] = text
    return options


def cmd_update(args: argparse.Namespace) -> int:
    """``scenario update``: change options of a stopped scenario."""
    if not args.option:
        raise ConfigurationError(detail="scenario update needs at least one --option KEY=VALUE")
    with _engine(args) as eng:
        sc = eng.update_scenario(args.name, **_options(args.option))
        _show(_describe(sc), as_json=args.json)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``scenario list``."""
    with _engine(args, readonly=True) as eng:
        _show([_describe(sc) for sc in eng.scenarios()], as_json=args.json)
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """``scenario remove``."""
    with _engine(args) as eng:
        eng.remove_scenario(args.name)
    return 0


def cmd_adopt(args: argparse.Namespace) -> int:
    """``adopt``: make a copied state directory the live one (its writable verbs then run).

    A copy's writable verbs are refused (E4006) until it is adopted: its
    scenarios name the original's masters and replicas.
    """
    with Engine.open(args.state, durability=args.durability, adopt=True) as eng:
        names = [sc.name for sc in eng.scenarios()]
    _show({"adopted": str(eng.state_dir), "scenarios": names}, as_json=args.json)
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """``start``: synchronize, then replicate (``--watch``: until interrupted or stopped).

    With ``--watch`` it answers ``rewind-points --set``, ``capture``, ``wait``
    and ``stop`` of its scenario from other commands (:mod:`xoengine.cli.daemon`).
    """
    with _engine(args) as eng:
        sc = eng.scenario(args.name)
        summaries = sc.start(level=args.level, watch=args.watch)
        if not args.watch:
            _show({"synchronized": summaries}, as_json=args.json)
            return 0
        stop = threading.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
        daemon = Daemon(eng.state_dir, sc, stop)
        try:
            _show({"synchronized": summaries}, as_json=args.json)
            sys.stdout.flush()
            said: Exception | None = None
            while not stop.wait(POLL_S):
                error = sc.watch_error  # say when live capture fails, and recovers
                if error is not said:
                    text = "works again" if error is None else f"fails, retrying: {error}"
                    print(f"live capture {text}", file=sys.stderr, flush=True)
                    said = error
        finally:
            daemon.close()
            for sig, handler in handlers.items():  # a second Ctrl-C or SIGTERM interrupts the stop
                signal.signal(sig, handler)
        # Ctrl-C, SIGTERM or `xoengine stop`: a stop, journaled (only a crash is not).
        try:
            sc.stop()
        except BaseException as e:
            daemon.stopped(e)
            raise
        daemon.stopped(None)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """``stop`` (a running ``start --watch`` of the scenario is told to stop, and waited for)."""
    run_or_ask(args.state, args.durability, args.name, {"verb": "stop"})
    _show({"scenario": args.name, "stopped": True}, as_json=args.json)  # as every verb answers
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """``capture``: journal the master's changes and apply them to active replicas."""
    _show(
        run_or_ask(args.state, args.durability, args.name, {"verb": "capture"}), as_json=args.json
    )
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    """``wait``: until every active replica applied everything journaled so far."""
    request = {"verb": "wait", "timeout": args.timeout}
    _show(run_or_ask(args.state, args.durability, args.name, request), as_json=args.json)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """``sync``."""
    with _engine(args) as eng:
        summaries = eng.scenario(args.name).synchronize(level=args.level, replica=args.replica)
        _show(summaries, as_json=args.json)
    return 0


def cmd_suspend(args: argparse.Namespace) -> int:
    """``suspend``."""
    with _engine(args) as eng:
        sc = eng.scenario(args.name)
        sc.suspend(args.replica)
        result = {
            "replica": args.replica,
            "suspended": True,
            "position": sc.applied_position(args.replica),
        }
        _show(result, as_json=args.json)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    """``resume``: apply what accumulated; after a rewind, resynchronize first.

    Prints the position the replica reached and, if the resume resynchronized
    it, what that synchronization checked and sent.
    """
    with _engine(args) as eng:
        sc = eng.scenario(args.name)
        before = eng.last_position()
        sc.resume(args.replica)
        sc.wait_replicated()
        runs = sc.sync_report(args.replica)["runs"]
        resync = next((run for run in runs if run["started_at"] > before), None)
        keys = ("level", "files_checked", "files_changed", "files_deleted", "bytes_sent")
        result = {
            "replica": args.replica,
            "position": sc.applied_position(args.replica),
            "resynchronized": None if resync is None else {key: resync[key] for key in keys},
        }
        _show(result, as_json=args.json)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats``."""
    with _engine(args, readonly=True) as eng:
        _show(eng.scenario(args.name).statistics(), as_json=args.json)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``report sync|replication``."""
    with _engine(args, readonly=True) as eng:
        sc = eng.scenario(args.name)
        if args.kind == "sync":
            report = sc.sync_report(args.replica, last_only=not args.all)
        else:
            report = sc.replication_report(args.replica, detail=args.detail)
        _show(report, as_json=args.json)
    return 0


def _tree_digest(root: str) -> dict[str, tuple[str, int, bytes]]:
    out: dict[str, tuple[str, int, bytes]] = {}
    for entry in walk(root):
        content = b""
        if entry.kind == "file":
            content = Path(root, entry.relpath).read_bytes()
        elif entry.kind == "symlink":
            content = os.fsencode(entry.target or "")
        out[entry.relpath] = (entry.kind, entry.mode, content)
    return out


def cmd_quickstart(args: argparse.Namespace) -> int:
    """``quickstart``: a master tree, two replicas, sync, changes, suspend/resume, reports."""
    base = Path(args.dir or tempfile.mkdtemp(prefix="xoengine-quickstart-"))
    master, r1, r2 = base / "master", base / "replica1", base / "replica2"
    master.mkdir(parents=True, exist_ok=True)
    # 1. A small master tree: text, a binary "database", a link, a non-UTF-8 name.
    (master / "docs").mkdir(exist_ok=True)
    (master / "docs" / "readme.txt").write_text("xoengine quickstart\n" * 100)
    (master / "db.bin").write_bytes(os.urandom(256 * 1024))
    (master / "latest").unlink(missing_ok=True)
    (master / "latest").symlink_to("docs/readme.txt")
    with open(os.fsencode(master) + b"/caf\xe9.txt", "wb") as f:
        f.write(b"a name that is not UTF-8\n")
    print(f"quickstart in {base}")
    with Engine.open(base / "state", durability="sync") as eng:
        sc = eng.create_scenario(
            "quickstart", master=str(master), replicas={"r1": str(r1), "r2": str(r2)}
        )
        # 2. Initial synchronization, then continuous replication.
        for summary in sc.start(level="block"):
            sent = f"{summary.files_changed} files, {summary.bytes_sent} bytes"
            print(f"synchronized {summary.replica}: {sent}")
        # 3. Change files: in place, an insertion (shifted data), a rename, a delete.
        with sc.open("db.bin", "r+b") as f:
            f.seek(4096)
            f.write(b"\x00" * 100)
        (master / "docs" / "readme.txt").write_text(
            "inserted line\n" + (master / "docs" / "readme.txt").read_text()
        )
        (master / "docs" / "notes.txt").write_text("notes\n")
        result = sc.capture()
        print(f"captured {result.events} events, {result.bytes_journaled} bytes journaled")
        sc.wait_replicated()
        # 4. Suspend r2; changes spool in the journal; resume applies them (no resync).
        sc.suspend("r2")
        (master / "docs" / "notes.txt").rename(master / "docs" / "notes-renamed.txt")
        (master / "db.bin").write_bytes((master / "db.bin").read_bytes()[: 128 * 1024])
        sc.capture()
        sc.wait_replicated()
        stats = sc.statistics()
        print(
            f"while suspended, r2 backlog: {stats.replicas['r2'].backlog_events} events, "
            f"{stats.replicas['r2'].backlog_bytes} bytes"
        )
        sc.resume("r2")
        sc.wait_replicated()
        # 5. Statistics and reports.
        print("\nstatistics:")
        _show(sc.statistics(), as_json=False, indent="  ")
        print("\nsynchronization report:")
        _show(sc.sync_report(), as_json=False, indent="  ")
        print("\nreplication report:")
        _show(sc.replication_report(), as_json=False, indent="  ")
        sc.stop()
    # 6. Check: both replicas equal the master, byte for byte.
    want = _tree_digest(str(master))
    for replica in (r1, r2):
        if _tree_digest(str(replica)) != want:
            raise ReplicaDivergedError(path=str(replica), position="end", replica=replica.name)
    print(f"\nreplicas identical to the master: {r1.name}, {r2.name}")
    if not args.keep and not args.dir:
        shutil.rmtree(base, ignore_errors=True)
    return 0


# -- parser ------------------------------------------------------------------------------


_OPTION_HELP = (
    "KEY=VALUE scenario option, VALUE as JSON if it parses (repeat), e.g. "
    "undo_max_bytes=10000000000 undo_window=86400 rewind_interval=300"
)


def add_parsers(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add quickstart, scenario and replication verbs."""
    quick = verbs.add_parser("quickstart", help="the main job: a whole replication round trip")
    quick.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    quick.add_argument("--keep", action="store_true", help="keep the temporary directory")
    quick.set_defaults(func=cmd_quickstart)

    def common(parser: argparse.ArgumentParser, *, name: bool = True) -> None:
        parser.add_argument("state", help="engine state directory")
        if name:
            parser.add_argument("name", help="scenario name")
        parser.add_argument("--json", action="store_true")
        parser.add_argument(
            "--durability", default="sync", choices=["sync", "metasync-off", "nosync"]
        )

    scen = verbs.add_parser("scenario", help="define, update, list and remove scenarios")
    sverbs = scen.add_subparsers(dest="scenario_verb", required=True)
    create = sverbs.add_parser("create", help="define a scenario")
    common(create)
    create.add_argument(
        "--kind", default="file_server", choices=["file_server", "database", "storage_group"]
    )
    create.add_argument("--master", action="append", required=True, help="master root (repeat)")
    create.add_argument("--replica", action="append", required=True, help="NAME=PATH (repeat)")
    create.add_argument("--include", action="append", default=[])
    create.add_argument("--exclude", action="append", default=[])
    create.add_argument(
        "--spool-limit", type=int, default=0, help="backlog bytes that raise an alert"
    )
    create.add_argument("--option", action="append", default=[], help=_OPTION_HELP)
    create.set_defaults(func=cmd_create)
    update = sverbs.add_parser("update", help="change options of a stopped scenario")
    common(update)
    update.add_argument("--option", action="append", default=[], help=_OPTION_HELP)
    update.set_defaults(func=cmd_update)
    lst = sverbs.add_parser("list", help="list scenarios")
    common(lst, name=False)
    lst.set_defaults(func=cmd_list)
    rem = sverbs.add_parser("remove", help="remove a scenario (history stays)")
    common(rem)
    rem.set_defaults(func=cmd_remove)
    adopt = verbs.add_parser("adopt", help="make a copied state directory the live one")
    common(adopt, name=False)
    adopt.set_defaults(func=cmd_adopt)

    start = verbs.add_parser("start", help="synchronize, then replicate")
    common(start)
    start.add_argument("--level", default="block", choices=["block", "file"])
    start.add_argument("--watch", action="store_true", help="watch and replicate until interrupted")
    start.set_defaults(func=cmd_start)
    for verb, func, text in (
        ("stop", cmd_stop, "stop replicating"),
        ("capture", cmd_capture, "journal master changes and apply them"),
        ("stats", cmd_stats, "scenario statistics"),
    ):
        parser = verbs.add_parser(verb, help=text)
        common(parser)
        parser.set_defaults(func=func)
    wait = verbs.add_parser("wait", help="until the replicas applied everything journaled")
    common(wait)
    wait.add_argument("--timeout", type=float, help="seconds (AE0469 when they pass)")
    wait.set_defaults(func=cmd_wait)
    sync = verbs.add_parser("sync", help="synchronize replicas")
    common(sync)
    sync.add_argument("--level", default="block", choices=["block", "file"])
    sync.add_argument("--replica")
    sync.set_defaults(func=cmd_sync)
    for verb, func in (("suspend", cmd_suspend), ("resume", cmd_resume)):
        parser = verbs.add_parser(verb, help=f"{verb} one replica")
        common(parser)
        parser.add_argument("replica")
        parser.set_defaults(func=func)
    report = verbs.add_parser("report", help="synchronization or replication report")
    common(report)
    report.add_argument("kind", choices=["sync", "replication"])
    report.add_argument("--replica")
    report.add_argument("--detail", action="store_true", help="replication: per-file lines")
    report.add_argument("--all", action="store_true", help="sync: every run, not only the last")
    report.set_defaults(func=cmd_report)
