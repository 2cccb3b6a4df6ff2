"""The CLI as a user runs it: real subprocesses on real journals."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from eventsourcing.persistence import StoredEvent
from scenario_kit import run_cli

from xoengine import codec
from xoengine.cli import main
from xoengine.datastore import open_store
from xoengine.engine import Engine
from xoengine.journal import LMDBApplicationRecorder

TOPIC = "xoengine.events:FileCreated"


def _journal(path: Path, n: int = 5) -> list[uuid.UUID]:
    store = open_store(path, durability="nosync")
    recorder = LMDBApplicationRecorder(store, prefix="app")
    recorder.create_table()
    oids = [uuid.uuid4() for _ in range(n)]
    for i, oid in enumerate(oids):
        state = codec.pack({"path": f"dir/file{i}.txt", "size": i * 10})
        recorder.insert_events([StoredEvent(oid, 1, "Created" if i % 2 else "Written", state)])
    store.close()
    return oids


def test_cli_demo_runs_and_verifies(tmp_path: Path) -> None:
    result = run_cli("demo", "--dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "verified: OK" in result.stdout
    assert "identical block stored once: True" in result.stdout


def test_cli_log_filters_and_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    oids = _journal(tmp_path)
    (tmp_path / "master").mkdir()
    (tmp_path / "master" / "a").write_text("a")
    (tmp_path / "master" / "b").write_text("b")
    with Engine.open(tmp_path / "engine", durability="nosync") as eng:
        master, replica = str(tmp_path / "master"), str(tmp_path / "replica")
        eng.create_scenario("s", master=master, replicas={"r": replica}).start()
    assert main(["journal", "log", str(tmp_path), "--json", "--topic", "Created"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["position"] for r in rows] == [2, 4]
    assert rows[0]["summary"] == "path='dir/file1.txt' size=10"
    # An engine's topics are ``module:Class``: the class name alone selects them too.
    assert main(["journal", "log", str(tmp_path / "engine"), "--topic", "FileCreated"]) == 0
    created = capsys.readouterr().out.splitlines()
    assert main(["journal", "log", str(tmp_path / "engine"), "--topic", TOPIC]) == 0
    assert capsys.readouterr().out.splitlines() == created
    assert len(created) == 2 and all(TOPIC in line for line in created)
    assert main(["journal", "log", str(tmp_path), "--from", "2", "--to", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "2"
    assert main(["journal", "log", str(tmp_path), "--originator", str(oids[4]), "--json"]) == 0
    assert [json.loads(x)["position"] for x in capsys.readouterr().out.splitlines()] == [5]
    assert main(["journal", "log", str(tmp_path), "--until", "2000-01-01T00:00:00Z"]) == 0
    assert capsys.readouterr().out == ""
    # Review 22 (A, F3): a time the log prints, given back as --since, left its record out.
    assert main(["journal", "log", str(tmp_path), "--json", "--from", "3", "--to", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)["time"]
    assert (
        main(["journal", "log", str(tmp_path), "--json", "--since", printed, "--until", printed])
        == 0
    )
    assert 3 in [json.loads(x)["position"] for x in capsys.readouterr().out.splitlines()]


def test_cli_verify_exits_nonzero_on_damage(tmp_path: Path) -> None:
    _journal(tmp_path)
    assert run_cli("journal", "verify", str(tmp_path)).returncode == 0
    store = open_store(tmp_path, durability="nosync")
    key = (2).to_bytes(8, "big")

    def flip(txn):  # type: ignore[no-untyped-def]
        value = bytearray(txn.get("app.events", key))
        value[12] ^= 0x10
        txn.put("app.events", key, bytes(value))

    store.write(flip)
    store.close()
    result = run_cli("journal", "verify", str(tmp_path), "--json")
    assert result.returncode == 4
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["damage"][0]["position"] == "2"


def test_cli_coded_error_for_missing_journal(tmp_path: Path) -> None:
    result = run_cli("journal", "verify", str(tmp_path / "missing"))
    assert result.returncode == 3
    assert "E4001" in result.stderr and "hint:" in result.stderr


def test_cli_copy_while_a_writer_keeps_appending(tmp_path: Path) -> None:
    src = tmp_path / "live"
    _journal(src, n=1)
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import sys, uuid
            from eventsourcing.persistence import StoredEvent
            from xoengine.datastore import open_store
            from xoengine.journal import LMDBApplicationRecorder
            store = open_store({str(src)!r})
            rec = LMDBApplicationRecorder(store, prefix="app")
            oid = uuid.uuid4()
            print("ready", flush=True)
            for i in range(2000):
                rec.insert_events([StoredEvent(oid, i, "Written", b"x" * 100)])
            store.close()
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        result = run_cli("journal", "copy", str(src), str(tmp_path / "copy"))
        assert result.returncode == 0, result.stderr
        assert "verified OK" in result.stdout
        writer.wait(timeout=120)
    copy = open_store(tmp_path / "copy", readonly=True)
    try:
        ids = [
            n.id
            for n in LMDBApplicationRecorder(copy, prefix="app").select_notifications(None, 10_000)
        ]
    finally:
        copy.close()
    assert ids == list(range(1, len(ids) + 1))  # a consistent, gapless prefix


def test_cli_scenario_options_at_create_and_update(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "m").mkdir()
    state, master, replica = (str(tmp_path / n) for n in ("state", "m", "r"))
    argv = ["scenario", "create", state, "s", "--master", master, "--replica", f"r1={replica}"]
    assert main([*argv, "--option", "undo_max_bytes=1000000", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["options"] == {"undo_max_bytes": 1000000}
    update = ["scenario", "update", state, "s", "--json"]
    assert main([*update, "--option", "undo_window=3600", "--option", 'include=["*.db"]']) == 0
    assert json.loads(capsys.readouterr().out)["options"] == {
        "undo_max_bytes": 1000000,
        "undo_window": 3600,
        "include": ["*.db"],
    }
    assert main([*update, "--option", "undo_max_byte=5"]) != 0  # a typo is refused
    assert "unknown option(s) undo_max_byte" in capsys.readouterr().err
    assert main([*update, "--option", "no-equals-sign"]) != 0


def test_every_scenario_verb_answers_json_with_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Was a bug (review 21 C, F7): ``suspend --json`` and ``stop --json`` printed nothing,
    and a script reading JSON after every verb failed on them."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "f").write_bytes(b"f")
    state, master, replica = (str(tmp_path / n) for n in ("state", "m", "r"))
    create = ["scenario", "create", state, "s", "--master", master, "--replica", f"r1={replica}"]
    assert main(create) == 0
    capsys.readouterr()
    for verb in (
        ["start", state, "s"],
        ["capture", state, "s"],
        ["suspend", state, "s", "r1"],
        ["resume", state, "s", "r1"],
        ["wait", state, "s"],
        ["stop", state, "s"],
    ):
        assert main([*verb, "--json"]) == 0, verb
        answer = json.loads(capsys.readouterr().out)
        assert isinstance(answer, dict) and answer, verb
    assert answer == {"scenario": "s", "stopped": True}


def test_cli_shows_any_file_name_unambiguously_on_a_strict_utf8_stream(tmp_path: Path) -> None:
    """Names with a newline or bytes that are not UTF-8, through history, diff and JSON.

    Under a strict UTF-8 stdout (PYTHONIOENCODING=utf-8, as in most desktop
    locales) ``history`` of such a name stopped with a UnicodeEncodeError, and a
    newline in a name split its line of a report in two.
    """
    import os  # noqa: PLC0415

    master = tmp_path / "m"
    master.mkdir()
    bad = os.fsencode(master) + b"/bad\xff.txt"
    with open(bad, "wb") as f:
        f.write(b"x")
    (master / "new\nline").write_bytes(b"y")
    state = str(tmp_path / "state")
    create = ["scenario", "create", state, "s", "--master", str(master)]
    assert main([*create, "--replica", f"r1={tmp_path / 'r1'}"]) == 0
    assert main(["start", state, "s"]) == 0
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "xoengine", *args]
        return subprocess.run(command, capture_output=True, timeout=120, check=False, env=env)

    history = cli("history", state, "s", os.fsdecode(b"bad\xff.txt"))
    assert history.returncode == 0, history.stderr
    assert b'created   "bad\\xff.txt"' in history.stdout
    diff = cli("diff", state, "s", "0")
    assert diff.returncode == 0, diff.stderr
    assert b'  - "bad\\xff.txt"\n' in diff.stdout
    assert b'  - "new\\nline"\n' in diff.stdout
    diff_json = cli("diff", state, "s", "0", "--json")
    assert diff_json.returncode == 0, diff_json.stderr
    added = json.loads(diff_json.stdout.decode("utf-8"))["added"]  # strict: valid UTF-8
    assert os.fsdecode(b"bad\xff.txt") in added
    assert "new\nline" in added


def test_cli_rewind_and_replay_report_progress_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal stderr, rewind and replay say how far they are; on a pipe, nothing."""
    import os  # noqa: PLC0415
    import pty  # noqa: PLC0415

    master = tmp_path / "m"
    master.mkdir()
    (master / "a").write_bytes(b"a")
    state = str(tmp_path / "state")
    create = ["scenario", "create", state, "s", "--master", str(master)]
    assert main([*create, "--replica", f"r1={tmp_path / 'r1'}"]) == 0
    assert main(["start", state, "s"]) == 0
    assert main(["rewind-points", state, "s", "--set", "one"]) == 0
    (master / "a").write_bytes(b"changed")
    (master / "b").write_bytes(b"b")
    assert main(["capture", state, "s"]) == 0

    def on_terminal(*args: str) -> tuple[int, str]:
        leader, follower = pty.openpty()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "xoengine.cli", *args],
                stdout=subprocess.DEVNULL,
                stderr=follower,
                timeout=120,
                check=False,
            )
            os.close(follower)
            chunks = []
            while True:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(leader)
        return done.returncode, b"".join(chunks).decode()

    code, said = on_terminal("rewind", state, "s", "r1", "one")
    assert code == 0
    reports = [line for line in said.splitlines() if line.startswith("undo records undone: ")]
    done, total = reports[-1].removeprefix("undo records undone: ").strip().split(" of ")
    assert done == total != "0"  # the last report: every record undone
    assert "xoengine resume" in said.split(reports[-1])[-1]  # then how the replica comes back
    code, said = on_terminal("replay", state, "s", "--to", str(tmp_path / "out"))
    assert code == 0
    assert "entries written: 2 of 2" in said
    piped = run_cli("replay", state, "s", "--to", str(tmp_path / "out2"))
    assert piped.returncode == 0
    assert "entries written" not in piped.stderr
