"""Requests to a running ``xoengine start --watch`` from the other commands.

Room: edge (the command line). A journal has one writer process. While
``start --watch`` is that writer, ``rewind-points --set``, ``capture``,
``wait`` and ``stop`` of the scenario it runs are handed to it instead of
failing with E4002: each is a JSON file in ``STATE/requests`` (written whole,
then renamed into place), which the daemon takes, carries out and answers
with a file of the same name; the command reads the answer and removes it.
The daemon names itself in ``STATE/requests/daemon.json`` (its pid and
scenario) while it serves, and looks for requests four times a second.

A request is carried out as the same verb would be by the command itself;
its error comes back coded as it was raised. If the daemon ends before it
answers (stopped, killed), the command runs the verb itself, since the
journal is free then.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from xoengine import errors
from xoengine.cli.output import plain
from xoengine.engine import Engine
from xoengine.errors import ConfigurationError, JournalLockedError, XoError

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from xoengine.engine import Scenario

__all__ = ["POLL_S", "REQUESTS", "Daemon", "run_or_ask"]

REQUESTS: Final = "requests"
"""The directory of the state directory that requests and answers pass through."""
POLL_S: Final = 0.25
"""How often the daemon looks for requests, and a command for its answer."""
_SELF: Final = "daemon.json"
_REQUEST: Final = ".request"
_ANSWER: Final = ".answer"


def _write(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` whole: a reader never sees part of it."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc to ask: it answered the signal
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass
class Daemon:
    """The serving side: ``start --watch`` answers the requests for its scenario."""

    directory: Path
    scenario: Scenario
    stop: threading.Event

    @classmethod
    def open(
        cls, state_dir: str | os.PathLike[str], scenario: Scenario, stop: threading.Event
    ) -> Daemon:
        """Serve requests for ``scenario``; ``stop`` is set by a ``stop`` request."""
        directory = Path(state_dir) / REQUESTS
        directory.mkdir(mode=0o700, exist_ok=True)
        _write(directory / _SELF, {"pid": os.getpid(), "scenario": scenario.name})
        return cls(directory, scenario, stop)

    def close(self) -> None:
        """Stop serving (a command waiting for an answer then runs its verb itself)."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _SELF).unlink()

    def serve(self) -> None:
        """Carry out and answer every request waiting, oldest first."""
        for path in sorted(self.directory.glob("*" + _REQUEST), key=_age):
            try:
                request = json.loads(path.read_bytes())
                path.unlink()
            except FileNotFoundError:
                continue  # its command gave up and took it back
            except (OSError, ValueError) as e:
                request = {"verb": None, "unreadable": repr(e)}
                path.unlink(missing_ok=True)
            answer = self._answer(request if isinstance(request, dict) else {"verb": None})
            with contextlib.suppress(OSError):  # a full volume: the command waits, or is stopped
                _write(path.with_suffix(_ANSWER), answer)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The result of ``request``, or its error: nothing a request holds ends the daemon."""
        try:
            return self._carry_out(request)
        except XoError as e:
            return {"error": e.describe()}
        except Exception as e:  # noqa: BLE001 (a malformed request: said to its command)
            error = ConfigurationError(detail=f"request {request!r} failed: {e!r}")
            return {"error": error.describe()}

    def _carry_out(self, request: dict[str, Any]) -> dict[str, Any]:
        sc = self.scenario
        verb = request.get("verb")
        if request.get("scenario") != sc.name:
            raise ConfigurationError(
                detail=f"the running `xoengine start --watch` (pid {os.getpid()}) "
                f"protects scenario {sc.name!r}, not {request.get('scenario')!r}"
            )
        if verb == "point":
            return {"result": plain(sc.set_rewind_point(str(request["name"])))}
        if verb == "capture":
            result = sc.capture()
            sc.wait_replicated()
            return {"result": plain(result)}
        if verb == "wait":
            return {"result": {"position": sc.wait_replicated(timeout=request.get("timeout"))}}
        if verb == "stop":
            self.stop.set()
            return {"result": {"stopping": os.getpid()}}
        raise ConfigurationError(detail=f"a request the daemon cannot read: {request!r}")


def _age(path: Path) -> int:
    """When ``path`` was written (0 if its command took it back meanwhile)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _rebuilt(described: dict[str, Any]) -> XoError:
    """The coded error a daemon answered with, as the same class (else a plain XoError)."""
    cls = getattr(errors, str(described.get("error")), None)
    message = str(described.get("message"))
    if isinstance(cls, type) and issubclass(cls, XoError):
        with contextlib.suppress(Exception):
            return cls(message)
    return XoError(message)


_GONE: Final = object()


def _ask(state_dir: str, busy: JournalLockedError, request: dict[str, Any]) -> Any:
    """Hand ``request`` to the daemon that holds the journal; ``_GONE`` if it ended first."""
    directory = Path(state_dir) / REQUESTS
    try:
        daemon = json.loads((directory / _SELF).read_bytes())
    except (OSError, ValueError):
        raise busy from None  # the writer serves no requests
    pid = daemon.get("pid")
    if not isinstance(pid, int) or str(pid) != str(busy.fields.get("pid")):
        raise busy  # a note left by an earlier daemon: this writer is another program
    name = uuid.uuid4().hex
    request_path = directory / (name + _REQUEST)
    answer_path = directory / (name + _ANSWER)
    _write(request_path, request)
    try:
        while True:
            try:
                answer = json.loads(answer_path.read_bytes())
                break
            except FileNotFoundError:
                pass
            if not _alive(pid):
                return _GONE
            time.sleep(POLL_S / 2)
    finally:
        request_path.unlink(missing_ok=True)
        answer_path.unlink(missing_ok=True)
    if "error" in answer:
        raise _rebuilt(answer["error"])
    if request["verb"] == "stop":  # answered once the daemon ended: the journal is free
        while _alive(pid):
            time.sleep(POLL_S / 2)
    return answer["result"]


def run_or_ask(
    state_dir: str,
    durability: str,
    scenario: str,
    request: dict[str, Any],
    local: Callable[[Scenario], Any],
) -> Any:
    """Run ``local`` on ``scenario`` with a writable engine, or have the running daemon do it.

    ``request`` is the same verb for the daemon (``{"verb": ..., ...}``). The
    answer is plain data either way, so the two print alike.
    """
    try:
        engine = Engine.open(state_dir, durability=durability)
    except JournalLockedError as busy:
        answer = _ask(state_dir, busy, {**request, "scenario": scenario})
        if answer is not _GONE:
            return answer
        engine = Engine.open(state_dir, durability=durability)
    with engine:
        return plain(local(engine.scenario(scenario)))
