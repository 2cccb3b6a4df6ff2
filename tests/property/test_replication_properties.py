r"""Replication properties: random change scripts on real trees leave every replica an exact copy.

Each example is a fresh engine (real LMDB, ``nosync``) protecting a small
master tree with two replicas. A rule-based machine changes the master with
every kind of operation (create, overwrite, append, insert so data shifts,
truncate both ways, rename files and whole directories, delete, mkdir,
symlinks of every sort, chmod, chown, extended attributes set and removed,
non-UTF-8 names, nested paths) and, at random points, captures and waits: the
replicas must then be byte-identical to the master (names, kinds, content,
modes, owners, extended attributes, link targets, file mtimes), and the master
state must describe the master exactly (sizes, block digests, the digest of
the extended attributes).
One replica is suspended and resumed at random, and the engine is restarted
at random; after a restart the start-up synchronization must find nothing to
send, since the applier already made the replicas exact.

Extended attributes come from ``xattr_values`` (a few names and values, so
that they collide and get removed). A write, a truncation or a
chown makes the kernel drop a capability, so the content rules and chown pick
a file that has one half the time.

``REPLICATION_EXAMPLES=2000`` in the environment runs that many examples of
the two main machines instead of the quick default (a soak run).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, ClassVar

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from xattr_values import CAPABILITIES, CAPABILITY, DIR_ACLS, XATTR_NAMES, XATTR_VALUES

from xoengine import capture as capture_module
from xoengine import tree as tree_module
from xoengine.blocks import BlockMap
from xoengine.capture import pack_digests
from xoengine.engine import Engine, Scenario
from xoengine.events import BytesWritten, ContentReplaced, XattrsChanged
from xoengine.masterstate import xattr_digest
from xoengine.testing import (
    Append,
    Chmod,
    Chown,
    CreateFile,
    Delete,
    Insert,
    MakeDir,
    Node,
    Operation,
    Rename,
    SetXattr,
    Symlink,
    TreeBuilder,
    Truncate,
    WriteAt,
    assert_trees_equal,
    snapshot_tree,
)
from xoengine.walk import read_xattrs

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

# Few names, so that operations collide: overwrite, rename over, re-create.
NAMES = [b"a", b"b", b"caf\xe9", b"\xff\xfe", "\u00e9t\u00e9".encode(), b"sp ace", b"x.db", b"-"]
small_bytes = st.binary(max_size=300)
# Random bytes of a few blocks (fast to draw): the insert-in-the-middle delta path.
large_bytes = st.builds(
    lambda seed, size: random.Random(seed).randbytes(size),
    st.integers(0, 2**32),
    st.integers(3000, 20000),
)
contents = st.one_of(small_bytes, large_bytes)
file_modes = st.integers(0, 0o177).map(lambda m: 0o600 | m)
dir_modes = st.integers(0, 0o077).map(lambda m: 0o700 | m)


MACHINE_SETTINGS = settings(
    deadline=None,
    stateful_step_count=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

EXAMPLES: dict[str, int] = {}  # machines run, per label (printed with -s)
DELTAS: dict[str, int] = {}  # ContentReplaced events replicated, per label
XATTR_OPS: dict[str, int] = {}  # extended attributes set or removed on the master, per label
XATTR_EVENTS: dict[str, int] = {}  # XattrsChanged events replicated, per label
CAP_DROPS: dict[str, int] = {}  # writes, truncations and chowns of a file with a capability


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _parents(path: bytes) -> list[bytes]:
    parts = path.split(b"/")
    return [b"/".join(parts[:i]) for i in range(1, len(parts))]


def check_master_state(scenario: Scenario, master: str, *, files_only: bool = False) -> None:
    """The master state describes the master tree: paths, kinds, sizes, targets, block digests."""
    tree = snapshot_tree(master)
    state = scenario.master_state_snapshot()
    expected = {path: node for path, node in tree.items() if not files_only or node.kind == "file"}
    got = {os.fsencode(p): v for p, v in state.items() if not files_only or v[0].kind == "file"}
    assert sorted(got) == sorted(expected)
    for path, node in expected.items():
        entry, digests = got[path]
        assert entry.kind == node.kind, path
        if node.kind == "symlink":
            assert os.fsencode(entry.target or "") == node.target, path
        elif node.kind == "file":
            assert node.content is not None
            assert entry.size == len(node.content), path
            want = pack_digests(BlockMap.compute(node.content, scenario.block_size))
            assert digests == want, f"stale block digests for {path!r}"
            assert entry.mode == node.mode, path
        if not files_only:  # the journaled-file machine sets none, and never captures
            assert entry.xattrs == xattr_digest(dict(node.xattrs)), f"xattrs of {path!r}"


class _Tree:
    """What the machine knows of the master tree right now (re-read after every change)."""

    def __init__(self, root: str) -> None:
        self.nodes: dict[bytes, Node] = snapshot_tree(root, content=False)

    def of(self, *kinds: str) -> list[bytes]:
        return sorted(p for p, n in self.nodes.items() if n.kind in kinds)

    @property
    def dirs(self) -> list[bytes]:
        return [b"", *self.of("dir")]

    def children(self, path: bytes) -> list[bytes]:
        return [p for p in self.nodes if p.startswith(path + b"/")]


class ChangeScriptMachine(RuleBasedStateMachine):
    """Random change scripts on a real master; replicas checked at every replication point."""

    opener_writes: ClassVar[bool] = False  # content through sc.open instead of plain files
    structural: ClassVar[bool] = True  # renames, deletes, mkdir, symlinks, chmod (need capture)
    rebuild_checks: ClassVar[bool] = False
    label: ClassVar[str] = "captured scripts"
    base_dir: ClassVar[str | None] = None  # where the trees and the journal go (None: tmp)

    def __init__(self) -> None:
        super().__init__()
        EXAMPLES[self.label] = EXAMPLES.get(self.label, 0) + 1
        self.base = tempfile.mkdtemp(prefix="xo-replprop-", dir=self.base_dir)
        self.master = os.path.join(self.base, "master")
        self.replicas = {
            "r1": os.path.join(self.base, "r1"),
            "r2": os.path.join(self.base, "r2"),
        }
        os.mkdir(self.master)
        self.engine: Engine | None = None
        self.scenario: Scenario | None = None
        self.builder = TreeBuilder(self.master)

    # -- set-up and tear-down -----------------------------------------------------------

    @initialize(
        block_size=st.sampled_from([512, 512, 1024, 4096]),
        initial=st.lists(st.tuples(st.sampled_from(NAMES), contents), max_size=3),
    )
    def start(self, block_size: int, initial: list[tuple[bytes, bytes]]) -> None:
        for name, data in initial:
            self.builder.apply(CreateFile(name, data))
        self.engine = Engine.open(os.path.join(self.base, "state"), durability="nosync")
        self.scenario = self.engine.create_scenario(
            "prop", master=self.master, replicas=self.replicas, block_size=block_size
        )
        if self.opener_writes:
            self.builder.opener = self.scenario.open
        self.scenario.start()
        self.check_replicas()

    def teardown(self) -> None:
        try:
            if self.scenario is not None:
                self.sc.resume("r2")
                self.replicate()
                if self.rebuild_checks:
                    self.rebuild_master_state()
        finally:
            if self.engine is not None:
                self.engine.close()
            shutil.rmtree(self.base, ignore_errors=True)

    @property
    def sc(self) -> Scenario:
        assert self.scenario is not None
        return self.scenario

    def tree(self) -> _Tree:
        return _Tree(self.master)

    def apply(self, operation: Operation) -> None:
        note(repr(operation))
        event(type(operation).__name__)
        self.builder.apply(operation)

    # -- checks ---------------------------------------------------------------------------

    def check_replicas(self) -> None:
        for name, path in self.replicas.items():
            if name not in self.sc.suspended:
                assert_trees_equal(self.master, path, mtimes=True, root=True)

    @rule()
    def replicate(self) -> None:
        before = self.engine.recorder.max_notification_id() if self.engine else 0
        if not self.opener_writes:
            self.sc.capture()
        self.sc.wait_replicated(timeout=60)
        self.check_replicas()
        check_master_state(self.sc, self.master, files_only=self.opener_writes)
        replaced = self._count(ContentReplaced, before or 0)
        if replaced:
            event("ContentReplaced journaled")
            DELTAS[self.label] = DELTAS.get(self.label, 0) + replaced
        xattrs = self._count(XattrsChanged, before or 0)
        if xattrs:
            event("XattrsChanged journaled")
            XATTR_EVENTS[self.label] = XATTR_EVENTS.get(self.label, 0) + xattrs

    def _count(self, kind: type, after: int) -> int:
        assert self.engine is not None
        return sum(1 for _ in self.engine._iter_events((kind,), after))

    def rebuild_master_state(self) -> None:
        live = self.sc.master_state_snapshot()
        self.sc.rebuild_master_state()
        assert self.sc.master_state_snapshot() == live

    @precondition(lambda self: self.structural)
    @rule()
    def suspend_second(self) -> None:
        self.sc.suspend("r2")

    @precondition(lambda self: self.structural)
    @rule()
    def resume_second(self) -> None:
        self.sc.resume("r2")

    @precondition(lambda self: self.structural)
    @rule()
    def restart(self) -> None:
        # Replicas are checked first, so the start-up synchronization must send nothing.
        self.replicate()
        assert self.engine is not None
        self.engine.close()
        self.engine = Engine.open(os.path.join(self.base, "state"), durability="nosync")
        self.scenario = self.engine.scenario("prop")
        if self.opener_writes:
            self.builder.opener = self.scenario.open
        summaries = self.scenario.start()
        for summary in summaries:
            assert (summary.files_changed, summary.files_deleted) == (0, 0), summary.transferred

    # -- content operations ------------------------------------------------------------------

    @rule(data=st.data(), content=contents)
    def create_file(self, data: st.DataObject, content: bytes) -> None:
        tree = self.tree()
        parent = data.draw(st.sampled_from(tree.dirs))
        if data.draw(st.booleans(), label="in a new sub-directory"):
            parent = _join(parent, b"sub")
        path = _join(parent, data.draw(st.sampled_from(NAMES)))
        blocked = any(tree.nodes.get(p, Node("dir", 0, 0, 0)).kind != "dir" for p in _parents(path))
        node = tree.nodes.get(path)
        if not blocked and (node is None or node.kind == "file"):
            self.apply(CreateFile(path, content))

    def _file(self, data: st.DataObject) -> tuple[bytes, int] | None:
        tree = self.tree()
        files = tree.of("file")
        if not files:
            return None
        path = self._prefer_capped(data, tree, files)
        return path, tree.nodes[path].size

    def _prefer_capped(self, data: st.DataObject, tree: _Tree, paths: list[bytes]) -> bytes:
        """One of ``paths``, half the time one with a file capability (if any has one).

        A write, a truncation or a chown makes the kernel drop the capability.
        """
        capped = [p for p in paths if CAPABILITY in dict(tree.nodes[p].xattrs)]
        prefer = data.draw(st.booleans(), label="one with a capability") if capped else False
        if prefer:
            path = data.draw(st.sampled_from(capped))
        else:
            path = data.draw(st.sampled_from(paths))
        if path in capped:
            event("changed after a setcap")
            CAP_DROPS[self.label] = CAP_DROPS.get(self.label, 0) + 1
        return path

    @rule(data=st.data(), content=st.binary(min_size=1, max_size=700))
    def write_at(self, data: st.DataObject, content: bytes) -> None:
        found = self._file(data)
        if found:
            path, size = found
            self.apply(WriteAt(path, data.draw(st.integers(0, size + 600)), content))

    @rule(data=st.data(), content=st.binary(min_size=1, max_size=700))
    def append(self, data: st.DataObject, content: bytes) -> None:
        found = self._file(data)
        if found:
            self.apply(Append(found[0], content))

    @rule(data=st.data(), content=st.binary(min_size=1, max_size=64))
    def insert(self, data: st.DataObject, content: bytes) -> None:
        found = self._file(data)
        if found:
            path, size = found
            self.apply(Insert(path, data.draw(st.integers(0, size)), content))

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        found = self._file(data)
        if found:
            path, size = found
            self.apply(Truncate(path, data.draw(st.integers(0, 2 * size + 600))))

    @rule(data=st.data(), steps=st.lists(st.integers(0, 2), min_size=2, max_size=4))
    def session(self, data: st.DataObject, steps: list[int]) -> None:
        """Several writes and truncations through one ``sc.open`` file, journaled at close.

        In the captured machine this mixes journaled writes with plain ones.
        """
        found = self._file(data)
        if not found:
            return
        path, size = found
        note(f"session on {path!r}: {steps}")
        with self.sc.open(os.fsdecode(path), "r+b") as f:
            for step in steps:
                if step == 0:
                    f.seek(data.draw(st.integers(0, size + 600), label="seek"))
                    f.write(data.draw(st.binary(min_size=1, max_size=700), label="write"))
                elif step == 1:
                    size = data.draw(st.integers(0, 2 * size + 600), label="truncate")
                    f.truncate(size)
                else:
                    f.flush()

    # -- structure --------------------------------------------------------------------------

    @precondition(lambda self: self.structural)
    @rule(data=st.data())
    def rename_file(self, data: st.DataObject) -> None:
        tree = self.tree()
        sources = tree.of("file", "symlink")
        if not sources:
            return
        src = data.draw(st.sampled_from(sources))
        dst = _join(data.draw(st.sampled_from(tree.dirs)), data.draw(st.sampled_from(NAMES)))
        there = tree.nodes.get(dst)
        if dst != src and (there is None or there.kind in {"file", "symlink"}):
            self.apply(Rename(src, dst))

    @precondition(lambda self: self.structural)
    @rule(data=st.data())
    def rename_dir(self, data: st.DataObject) -> None:
        tree = self.tree()
        dirs = tree.of("dir")
        if not dirs:
            return
        src = data.draw(st.sampled_from(dirs))
        parents = [d for d in tree.dirs if d != src and not d.startswith(src + b"/")]
        dst = _join(data.draw(st.sampled_from(parents)), data.draw(st.sampled_from(NAMES)))
        there = tree.nodes.get(dst)
        empty_dir = there is not None and there.kind == "dir" and not tree.children(dst)
        if dst != src and (there is None or empty_dir):
            self.apply(Rename(src, dst))

    @precondition(lambda self: self.structural)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        tree = self.tree()
        if tree.nodes:
            self.apply(Delete(data.draw(st.sampled_from(sorted(tree.nodes)))))

    @precondition(lambda self: self.structural)
    @rule(data=st.data(), mode=dir_modes)
    def mkdir(self, data: st.DataObject, mode: int) -> None:
        tree = self.tree()
        path = _join(data.draw(st.sampled_from(tree.dirs)), data.draw(st.sampled_from(NAMES)))
        if path not in tree.nodes:
            self.apply(MakeDir(path, mode))

    @precondition(lambda self: self.structural)
    @rule(data=st.data(), kind=st.sampled_from(["file", "dir", "dangling", "absolute", "bytes"]))
    def symlink(self, data: st.DataObject, kind: str) -> None:
        tree = self.tree()
        parent = data.draw(st.sampled_from(tree.dirs))
        path = _join(parent, data.draw(st.sampled_from(NAMES)))
        if path in tree.nodes:
            return
        up = b"../" * (parent.count(b"/") + 1 if parent else 0)
        targets = {
            "file": [up + p for p in tree.of("file")],
            "dir": [up + p for p in tree.of("dir")] + [b"."],
            "dangling": [b"nowhere", up + b"gone/away"],
            "absolute": [os.fsencode(self.master) + b"/a", b"/nonexistent/xo\xe9"],
            "bytes": [b"caf\xe9", b"\xff/\xfe"],
        }[kind]
        if targets:
            self.apply(Symlink(path, data.draw(st.sampled_from(targets))))

    @precondition(lambda self: self.structural)
    @rule(data=st.data())
    def chmod(self, data: st.DataObject) -> None:
        tree = self.tree()
        paths = tree.of("file", "dir")
        if paths:
            path = data.draw(st.sampled_from(paths))
            modes = dir_modes if tree.nodes[path].kind == "dir" else file_modes
            self.apply(Chmod(path, data.draw(modes)))

    @precondition(lambda self: self.structural and os.geteuid() == 0)  # only root gives away
    @rule(data=st.data())
    def chown(self, data: st.DataObject) -> None:
        tree = self.tree()
        paths = tree.of("file", "dir", "symlink")
        if paths:
            path = self._prefer_capped(data, tree, paths)  # even to the same owner: dropped
            uid, gid = data.draw(st.sampled_from([(0, 0), (65534, 65534), (1000, 100)]))
            self.apply(Chown(path, uid, gid))

    @precondition(lambda self: self.structural and not self.opener_writes)
    @rule(data=st.data(), what=st.sampled_from(["chmod", "chown", "xattr"]))
    def change_the_root(self, data: st.DataObject, what: str) -> None:
        """The master root's own mode, owner or an attribute (replicas: their own directory)."""
        root = self.master
        if what == "chmod":
            mode = data.draw(dir_modes)
            note(f"chmod the root {mode:o}")
            os.chmod(root, mode)
        elif what == "chown" and os.geteuid() == 0:
            uid, gid = data.draw(st.sampled_from([(0, 0), (65534, 65534), (1000, 100)]))
            note(f"chown the root {uid}:{gid}")
            os.chown(root, uid, gid)
        else:
            name = data.draw(st.sampled_from(XATTR_NAMES["dir"]))
            XATTR_OPS[self.label] = XATTR_OPS.get(self.label, 0) + 1
            if name in read_xattrs(root) and data.draw(st.booleans(), label="remove"):
                note(f"removexattr the root {name}")
                os.removexattr(root, name)
                return
            values = DIR_ACLS if name == "system.posix_acl_access" else XATTR_VALUES[name]
            value = data.draw(st.sampled_from(values))
            note(f"setxattr the root {name}={value.hex()}")
            os.setxattr(root, name, value)

    @precondition(lambda self: self.structural)
    @rule(data=st.data())
    def set_xattr(self, data: st.DataObject) -> None:
        """Set or remove one extended attribute (removal only where there is one to remove)."""
        tree = self.tree()
        paths = [p for p in tree.of("file", "dir", "symlink") if XATTR_NAMES[tree.nodes[p].kind]]
        if not paths:
            return
        path = data.draw(st.sampled_from(paths))
        node = tree.nodes[path]
        name = data.draw(st.sampled_from(XATTR_NAMES[node.kind]))
        value: bytes | None = None
        if name not in dict(node.xattrs) or not data.draw(st.booleans(), label="remove"):
            directory = node.kind == "dir" and name == "system.posix_acl_access"
            values = DIR_ACLS if directory else XATTR_VALUES[name]
            value = data.draw(st.sampled_from(values))
        XATTR_OPS[self.label] = XATTR_OPS.get(self.label, 0) + 1
        self.apply(SetXattr(path, name, value))

    @precondition(lambda self: self.structural and os.geteuid() == 0)  # CAP_SETFCAP
    @rule(data=st.data(), value=st.sampled_from(CAPABILITIES))
    def setcap(self, data: st.DataObject, value: bytes) -> None:
        """A file capability: the content rules and chown then pick that file half the time."""
        files = self.tree().of("file")
        if files:
            XATTR_OPS[self.label] = XATTR_OPS.get(self.label, 0) + 1
            self.apply(SetXattr(data.draw(st.sampled_from(files)), CAPABILITY, value))


class JournaledFileMachine(ChangeScriptMachine):
    """The same content scripts written through ``sc.open``; no capture ever runs."""

    opener_writes = True
    structural = False
    label = "journaled-file scripts"


class RebuildMachine(ChangeScriptMachine):
    """Captured scripts again; at the end the master state is dropped and folded again.

    One more rule puts bytes in front of a file of many blocks: a delta whose
    new block map is not in the journal, so the rebuild must derive it from the
    content the journal holds.
    """

    rebuild_checks = True
    label = "rebuild scripts"

    @rule(seed=st.integers(0, 2**16), head=st.binary(min_size=1, max_size=64))
    def shift_a_large_file(self, seed: int, head: bytes) -> None:
        path = os.path.join(self.master, "shifted.bin")
        if not os.path.isfile(path) or os.path.islink(path):
            if os.path.lexists(path):
                return
            self.apply(CreateFile(b"shifted.bin", random.Random(seed).randbytes(24 * 1024)))
            self.replicate()
        self.apply(Insert(b"shifted.bin", 0, head))
        self.replicate()


class CoarseTimeMachine(ChangeScriptMachine):
    """Captured scripts on a filesystem with one-second timestamps (racy files everywhere)."""

    label = "coarse-time scripts"


def _run(machine: type[ChangeScriptMachine], examples: int, **options: Any) -> None:
    counters = (EXAMPLES, DELTAS, XATTR_OPS, XATTR_EVENTS, CAP_DROPS)
    before = [c.get(machine.label, 0) for c in counters]
    run_state_machine_as_test(
        machine, settings=settings(MACHINE_SETTINGS, max_examples=examples, **options)
    )
    runs, deltas, xattr_ops, xattr_events, cap_drops = (
        c.get(machine.label, 0) - b for c, b in zip(counters, before, strict=True)
    )
    print(
        f"{machine.label}: {runs} examples, {deltas} deltas, {xattr_ops} xattr ops"
        f" ({cap_drops} writes or chowns after a setcap), {xattr_events} XattrsChanged"
    )


def test_replica_matches_master_after_captured_scripts() -> None:
    _run(ChangeScriptMachine, int(os.environ.get("REPLICATION_EXAMPLES", "250")))


def test_replica_matches_master_after_journaled_file_scripts() -> None:
    _run(JournaledFileMachine, int(os.environ.get("REPLICATION_EXAMPLES", "150")))


def test_master_state_rebuilt_from_journal_equals_live() -> None:
    _run(RebuildMachine, 50, stateful_step_count=30)


class MappedCopyMachine(RebuildMachine):
    """Rebuild scripts (with their shifted file), every changed file spilled or read mapped."""

    label = "mapped-copy scripts"


def test_replica_matches_master_when_files_are_read_as_mapped_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A file above HOLD_MAX is copied to an unnamed file and mapped, and a stream
    # of more changed bytes than that gives up for the whole read: with 0, every
    # change of a file takes that path (a 20 GiB file would, in production).
    monkeypatch.setattr(tree_module, "HOLD_MAX", 0)
    # And every in-place change is journaled in parts as read (spilled), with each
    # batch committed at once.
    monkeypatch.setattr(capture_module, "FLUSH_BYTES", 0)
    _run(MappedCopyMachine, 50, stateful_step_count=30)


def test_replica_matches_master_on_a_coarse_time_filesystem(
    coarse_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every script runs within a second or two, so same-size rewrites keep their stat.
    monkeypatch.setattr(CoarseTimeMachine, "base_dir", str(coarse_fs))
    _run(CoarseTimeMachine, int(os.environ.get("REPLICATION_EXAMPLES", "60")))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 40 * 512),
    changed=st.sets(st.integers(0, 39), max_size=40),
    seed=st.integers(0, 2**32 - 1),
)
def test_in_place_changes_journal_exactly_the_changed_blocks(
    size: int, changed: set[int], seed: int
) -> None:
    # Small blocks, reads and blobs, so that runs of changed blocks cross read
    # chunks and blob caps: the ranges journaled are the changed blocks, each
    # byte once, no range above the cap, and the replica ends exact.
    import pytest  # noqa: PLC0415

    from xoengine import capture  # noqa: PLC0415

    bs, cap = 512, 3 * 512
    rng = random.Random(seed)
    old = rng.randbytes(size)
    new = bytearray(old)
    blocks_changed = sorted(b for b in changed if b * bs < size)
    for b in blocks_changed:
        end = min(size, (b + 1) * bs)
        new[b * bs : end] = bytes(x ^ 0xFF for x in old[b * bs : end])
    with tempfile.TemporaryDirectory() as base, pytest.MonkeyPatch.context() as patch:
        patch.setattr(capture, "_CHUNK", 4 * bs)
        patch.setattr(capture, "BLOB_MAX", cap)
        master = os.path.join(base, "master")
        os.mkdir(master)
        with open(os.path.join(master, "f"), "wb") as f:
            f.write(old)
        engine = Engine.open(os.path.join(base, "state"), durability="nosync")
        try:
            sc = engine.create_scenario(
                "p", master=master, replicas={"r1": os.path.join(base, "r1")}, block_size=bs
            )
            sc.start()
            with open(os.path.join(master, "f"), "r+b") as f:
                f.write(new)
            result = sc.capture()
            ranges = [
                (offset, length)
                for position, e in engine._iter_events((BytesWritten,))
                if position in result.positions
                for offset, length, _ in e.ranges
            ]
            assert all(length <= cap for _, length in ranges)
            covered = sorted(x for offset, length in ranges for x in range(offset, offset + length))
            expected = [x for b in blocks_changed for x in range(b * bs, min(size, (b + 1) * bs))]
            assert covered == expected
            sc.wait_replicated(timeout=30)
            assert_trees_equal(master, os.path.join(base, "r1"), mtimes=True)
        finally:
            engine.close()
