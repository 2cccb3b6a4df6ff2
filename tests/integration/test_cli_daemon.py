"""Commands beside a running ``xoengine start --watch``: it carries out their requests.

The journal has one writer process. Review 18: with the daemon running, a
user could not set a rewind point (E4002) nor wait for replication (no such
verb); the only way was to stop the daemon, which costs a resynchronization
of every replica per point. The daemon here is a real subprocess; the other
commands run in this process through ``main``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from xoengine.cli import main
from xoengine.cli.daemon import REQUESTS
from xoengine.engine import Engine

if TYPE_CHECKING:
    from collections.abc import Iterator


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    """A state directory whose scenario ``fs1`` runs under ``start --watch``.

    Its watch delay is longer than the test: only captures and points journal.
    """
    master = tmp_path / "m"
    master.mkdir()
    (master / "a.txt").write_text("v1\n")
    state = str(tmp_path / "state")
    (tmp_path / "m2").mkdir()
    for name, root in (("fs1", master), ("other", tmp_path / "m2")):
        argv = ["scenario", "create", state, name, "--master", str(root)]
        argv += ["--replica", f"r1={tmp_path / name}", "--option", "watch_delay=3600"]
        assert main(argv) == 0
    # A stop request an earlier daemon never took (both killed): the new one drops it.
    (Path(state) / REQUESTS).mkdir()
    leftover = {"verb": "stop", "scenario": "fs1"}
    (Path(state) / REQUESTS / f"{os.getpid()}-left.request").write_text(json.dumps(leftover))
    proc = subprocess.Popen(
        [sys.executable, "-m", "xoengine.cli", "start", state, "fs1", "--watch", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "{"  # printed once it serves requests
    try:
        yield state, master, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        proc.stdout.close()


def test_point_capture_wait_and_stop_go_through_the_running_daemon(
    daemon: tuple[str, Path, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    state, master, proc = daemon
    replica = tmp_path / "fs1"
    (master / "a.txt").write_text("v2\n")
    rows = _json(capsys, ["rewind-points", state, "fs1", "--set", "p1", "--json"])
    assert isinstance(rows, list)
    assert [r["name"] for r in rows if r["kind"] == "user"] == ["p1"]
    capsys.readouterr()
    assert main(["cat", state, "fs1", "a.txt", "--at", "p1"]) == 0
    assert capsys.readouterr().out == "v2\n"  # the point holds the write made before it
    (master / "a.txt").write_text("v3\n")
    captured = _json(capsys, ["capture", state, "fs1", "--json"])
    assert isinstance(captured, dict) and captured["updated"] == 1
    assert (replica / "a.txt").read_text() == "v3\n"  # capture waits for the replicas
    waited = _json(capsys, ["wait", state, "fs1", "--json", "--timeout", "60"])
    assert isinstance(waited, dict) and waited["position"] >= 1
    # Errors come back coded, as the command itself would raise them.
    assert main(["rewind-points", state, "fs1", "--set", "p1"]) == 2
    said = capsys.readouterr().err
    assert "error E1001" in said and "another rewind point of this scenario has it" in said
    assert main(["capture", state, "other"]) == 2
    assert "protects scenario 'fs1', not 'other'" in capsys.readouterr().err
    # Requests it cannot carry out are answered with an error; the daemon goes on.
    requests = Path(state, REQUESTS)
    me = os.getpid()
    bad = {"text": "not json", "list": "[1, 2]", "nameless": '{"verb": "point", "scenario": "fs1"}'}
    for name, body in bad.items():
        (requests / f"{me}-{name}.request").write_text(body)
    os.mkfifo(requests / f"{me}-fifo.request")  # read, it would block the daemon for good
    (requests / f"{me}-zero.request").symlink_to("/dev/zero")
    gone = subprocess.Popen(["true"])  # a command that ended: nobody waits for its answer
    gone.wait()
    stop = json.dumps({"verb": "stop", "scenario": "fs1"})
    (requests / f"{gone.pid}-gone.request").write_text(stop)
    for _ in range(2):  # the second is taken in a later round than the bad ones
        _json(capsys, ["wait", state, "fs1", "--json"])
    for name in [*bad, "fifo", "zero"]:
        answer = json.loads((requests / f"{me}-{name}.answer").read_text())
        assert answer["error"]["code"] == "E1001", answer
        (requests / f"{me}-{name}.answer").unlink()
    assert not (requests / f"{gone.pid}-gone.request").exists()  # dropped, not carried out
    assert not (requests / f"{gone.pid}-gone.answer").exists()
    assert proc.poll() is None  # still serving: neither stop request stopped it
    assert main(["stop", state, "fs1"]) == 0  # returns once the daemon ended
    assert proc.poll() == 0
    stats = _json(capsys, ["stats", state, "fs1", "--json"])
    assert isinstance(stats, dict) and stats["state"] == "Stopped"
    assert not list(Path(state, REQUESTS).iterdir())  # every request and answer removed
    (master / "a.txt").write_text("v4\n")
    assert main(["capture", state, "fs1"]) == 0  # no daemon: the command runs it
    assert (replica / "a.txt").read_text() == "v4\n"


def test_sigterm_stops_the_daemon_with_every_change_on_the_replicas(
    daemon: tuple[str, Path, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``systemctl stop``: the last pass journals the change, the replicas get it, state Stopped.

    Review 18: the last pass's change reached the journal but no replica, the
    exit status was 0 and ``stats`` said Running, backlog 1.
    """
    state, master, proc = daemon
    (master / "a.txt").write_text("saved just before the shutdown\n")  # no pass saw it yet
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert (tmp_path / "fs1" / "a.txt").read_text() == "saved just before the shutdown\n"
    stats = _json(capsys, ["stats", state, "fs1", "--json"])
    assert isinstance(stats, dict) and stats["state"] == "Stopped"
    assert stats["replicas"]["r1"]["backlog_events"] == 0


def test_stop_says_when_the_daemons_stop_failed(
    daemon: tuple[str, Path, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The master root gone: the last pass fails, and ``xoengine stop`` says so (E2005).

    Review 18 (second reading): the daemon answered "stopping" before it
    stopped, so ``stop`` exited 0 while the daemon's last pass failed.
    """
    state, master, proc = daemon
    master.rename(tmp_path / "away")
    capsys.readouterr()
    assert main(["stop", state, "fs1"]) == 2
    assert "error E2005" in capsys.readouterr().err
    assert proc.wait() == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a full tmpfs")
def test_commands_beside_the_daemon_on_a_full_state_volume_are_coded_and_stop_still_stops(
    daemon: tuple[str, Path, subprocess.Popen[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Review 19: with no room for a request file, ``capture``, ``wait``, ``stop`` and
    ``rewind-points --set`` died with a traceback, and ``stop`` could not stop the daemon.

    The requests' directory is a full tmpfs here (the daemon's note copied into it).
    """
    state, _master, proc = daemon
    requests = Path(state) / REQUESTS
    note = (requests / "daemon.json").read_bytes()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(requests)], check=True)
    try:
        (requests / "daemon.json").write_bytes(note)
        with pytest.raises(OSError), open(requests / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
        for argv in (["capture", state, "fs1"], ["rewind-points", state, "fs1", "--set", "p"]):
            capsys.readouterr()
            assert main(argv) == 3, argv
            err = capsys.readouterr().err
            assert err.startswith("error E4004:") and "Traceback" not in err, err
        assert main(["stop", state, "fs1"]) == 0  # told by SIGTERM: a stop all the same
        assert proc.wait() == 0
    finally:
        subprocess.run(["umount", str(requests)], check=True)
    stats = _json(capsys, ["stats", state, "fs1", "--json"])
    assert isinstance(stats, dict) and stats["state"] == "Stopped"


def test_output_on_a_full_volume_is_coded(tmp_path: Path) -> None:
    """Review 19: ``history > /dev/full`` and ``cat > file`` on a full volume: traceback, exit 1."""
    master = tmp_path / "m"
    master.mkdir()
    (master / "big").write_bytes(os.urandom(300_000))
    state = str(tmp_path / "state")
    assert (
        main(
            [
                "scenario",
                "create",
                state,
                "s",
                "--master",
                str(master),
                "--replica",
                f"r1={tmp_path / 'r1'}",
            ]
        )
        == 0
    )
    assert main(["start", state, "s"]) == 0
    for argv in (
        ["cat", state, "s", "big"],
        ["history", state, "s", "big"],
        ["journal", "log", str(Path(state) / "journal")],
    ):
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [sys.executable, "-m", "xoengine.cli", *argv],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
            )
        assert done.returncode == 3, (argv, done.stderr)
        assert done.stderr.startswith("error E4004:") and "Traceback" not in done.stderr


def test_a_writer_that_is_not_the_daemon_is_refused_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A note left by an earlier daemon whose pid is not the writer's: E4002, nothing asked."""
    master = tmp_path / "m"
    master.mkdir()
    state = tmp_path / "state"
    with Engine.open(state) as eng:  # this process is the writer
        eng.create_scenario("fs1", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        (state / REQUESTS).mkdir()
        (state / REQUESTS / "daemon.json").write_text(json.dumps({"pid": 1, "scenario": "fs1"}))
        capsys.readouterr()
        assert main(["rewind-points", str(state), "fs1", "--set", "p"]) == 3
        assert "error E4002" in capsys.readouterr().err
        assert [p.name for p in (state / REQUESTS).iterdir()] == ["daemon.json"]
