r"""Rewind and forensic properties: every rewind point is a state you can get back, exactly.

Each example is a fresh engine (real LMDB, ``nosync``) protecting a small
master tree with two replicas. A random change script runs on the master
(create, overwrite, append, insert so data shifts, write in place, copy a
part of a file over another part of it (``dd conv=notrunc``), truncate
both ways, rename files and whole directories, delete, mkdir, symlinks, chmod,
chown, extended attributes set and removed, the same on the master root itself,
non-UTF-8 names, block size 512 or 4096) and sets rewind points at random
moments. ``set_rewind_point`` captures
first, so the master tree right after it *is* the state at the point's
position: the test copies it (names, kinds, content, permission bits, owners,
extended attributes, link targets, and the root's own mode, owner and
attributes). Then, for every recorded point:

(a) rewinding replica r1 to the points in random order, back and forth, leaves
    exactly the recorded tree (going back plays the undo log, going forward
    applies the journal again);
(b) ``Engine.replay`` rebuilds the recorded tree from the journal alone, and a
    replay does not touch the replica (tree, applied position, undo log);
(c) ``Engine.diff`` between two points agrees with the recorded trees, see
    :func:`check_diff` for exactly what is asserted and why;
(d) ``Engine.history`` of every path puts the right identity there, with the
    right extended attributes, at every point.

Extended attributes come from ``xattr_values`` (a few names and values, so
that they collide and get removed). A write, a truncation or a
chown makes the kernel drop a capability, so those operations pick a file that
has one half the time: rewinding across them must give the capability back.

A second property resumes r1 after the rewinds (a block-level resync), runs
more of the script with more points, and rewinds to every point again,
resuming and trimming at random in between: old points now lie in the gaps
that earlier rewinds (backward, forward, into a gap) and resyncs left in the
undo log.

Replication stops and starts again at random: points set while it is stopped
lie between the position a replica holds and the resync that the next start
runs, and must stay exact.

Retention trims at random too: a script step with a random budget (while r1
and r2 replicate), and between the rewinds of the resume round. A rewind back
below the highest trim is refused and leaves the replica as it was; every
other point stays exact; after every rewind each blob of the undo log's own
table is held and counted exactly (``UndoLog.check``).

File mtimes are not compared: the brief of a rewind is content, kinds, modes
and link targets (replication properties check mtimes separately).

Deleted entries (and what a rename replaces) are moved to a graveyard outside
the master instead of being unlinked, so their inode numbers stay in use: the
capture matches renames by inode, and a reused inode turns a delete + create
into a rename (into a new directory, say), which made failing examples
irreproducible.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from xattr_values import CAPABILITIES, CAPABILITY, DIR_ACLS, XATTR_NAMES, XATTR_VALUES

from xoengine import forensic
from xoengine.engine import Engine, Scenario
from xoengine.errors import NoFileAtError, RewindUnreachableError
from xoengine.rewind import RetentionPolicy
from xoengine.testing import root_node, snapshot_contents
from xoengine.walk import read_xattrs

if TYPE_CHECKING:
    from xoengine.forensic import DiffResult
    from xoengine.rewind import RewindPoint

# Few names, so that operations collide: overwrite, rename over, re-create.
NAMES = [b"a", b"b", b"caf\xe9", b"\xff\xfe", "\u00e9t\u00e9".encode(), b"sp ace", b"x.db"]
LINK_TARGETS = [b"a", b"../a", b"caf\xe9", b"nowhere", b"d/e/f", b"/etc/passwd"]
OWNERS_OK = os.geteuid() == 0  # only root gives files away
FILE_MODES = [0o600, 0o644, 0o640, 0o664, 0o700, 0o755]
DIR_MODES = [0o700, 0o750, 0o755, 0o711]

small_bytes = st.binary(max_size=700)
large_bytes = st.builds(
    lambda seed, size: random.Random(seed).randbytes(size),
    st.integers(0, 2**32),
    st.integers(1500, 6000),
)
contents = st.one_of(small_bytes, small_bytes, large_bytes)

OPERATIONS = [
    "create", "create", "overwrite", "append", "insert", "write_at", "copy_within", "truncate",
    "rename_file", "rename_dir", "delete", "mkdir", "symlink", "chmod_file", "chmod_dir",
    *(["chown"] if OWNERS_OK else []),
    "xattr", "xattr", *(["setcap"] if os.geteuid() == 0 else []),  # capabilities: root's
    "root",  # the master root's own mode, owner or extended attributes
    "point", "point",
    "trim",  # retention with a random budget, while r1 and r2 replicate
    "restart",  # stop replicating (changes and points go on), or start again: a resync
]  # fmt: skip
OWNERS = [(0, 0), (65534, 65534), (1000, 100), (0, 65534)]


STATS: dict[str, int] = {
    "examples": 0,
    "points": 0,
    "rewinds": 0,
    "replays": 0,
    "path replays": 0,
    "diffs": 0,
    "histories": 0,
    "xattr ops": 0,  # extended attributes set or removed
    "after setcap": 0,  # writes, truncations and chowns of a file with a capability
    "root ops": 0,  # the root's own mode, owner or extended attributes changed
    "trims": 0,  # retention trims that cut r1's undo log (script steps, resume round)
    "refused": 0,  # rewinds refused below a trim
    "lagged": 0,  # starts that resynchronized replicas behind the journal
}

# -- recorded trees -----------------------------------------------------------------------

# ("file", mode, bytes, xattrs, owner) | ("dir", mode, xattrs, owner) | ("symlink", target,
# xattrs, owner); xattrs: sorted ((name, value), ...)
Node = tuple[Any, ...]


ROOT = b"."
"""The key of the root's own node in a recorded tree: ("root", mode, xattrs, owner)."""


def snapshot(root: str) -> dict[bytes, Node]:
    """:func:`snapshot_contents`, and the root directory's own metadata under :data:`ROOT`."""
    own = root_node(root)
    return {**snapshot_contents(root), ROOT: ("root", own.mode, own.xattrs, own.owner)}


def differences(want: dict[bytes, Node], got: dict[bytes, Node]) -> list[str]:
    """Readable list of what differs (for assertion messages)."""
    out = []
    for path in sorted(set(want) | set(got)):
        a, b = want.get(path), got.get(path)
        if a != b:
            short = [
                x if not isinstance(x, bytes) or len(x) < 40 else f"<{len(x)} bytes>"
                for x in (a, b)
            ]
            out.append(f"{path!r}: want {short[0]} got {short[1]}")
    return out


def assert_tree(root: str, want: dict[bytes, Node], what: str) -> None:
    got = snapshot(root)
    assert got == want, f"{what}: " + "; ".join(differences(want, got)[:10])


# -- the change script ------------------------------------------------------------------------


@dataclass
class Recorded:
    point: RewindPoint
    tree: dict[bytes, Node]


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


class Script:
    """Applies random operations to the master (plain os calls) and records rewind points."""

    def __init__(self, master: str, graveyard: str, data: st.DataObject) -> None:
        self.master = os.fsencode(master)
        self.graveyard = os.fsencode(graveyard)
        self.data = data
        self.buried = 0
        self.floor = 0  # the highest position retention trimmed r1's undo log to

    def abspath(self, rel: bytes) -> bytes:
        return os.path.join(self.master, rel)

    def bury(self, rel: bytes) -> None:
        """Delete ``rel`` from the master, keeping its inode (and its children's) in use."""
        self.buried += 1
        os.rename(self.abspath(rel), os.path.join(self.graveyard, b"%d" % self.buried))

    def nodes(self) -> dict[bytes, Node]:
        return snapshot_contents(os.fsdecode(self.master))

    def draw(self, strategy: st.SearchStrategy[Any]) -> Any:
        return self.data.draw(strategy)

    def pick(self, paths: list[bytes]) -> bytes:
        return self.draw(st.sampled_from(sorted(paths)))

    def pick_prefer_capped(self, paths: list[bytes], nodes: dict[bytes, Node]) -> bytes:
        """One of ``paths``, half the time one with a file capability (if any has one).

        A write, a truncation or a chown makes the kernel drop the capability.
        """
        capped = [p for p in paths if CAPABILITY in dict(nodes[p][-2])]
        if capped and self.draw(st.booleans()):
            path = self.pick(capped)
        else:
            path = self.pick(paths)
        if path in capped:
            STATS["after setcap"] += 1
            event("changed after a setcap")
        return path

    def new_path(self, nodes: dict[bytes, Node]) -> bytes:
        dirs = [b"", *(p for p, n in nodes.items() if n[0] == "dir")]
        return _join(self.pick(dirs), self.draw(st.sampled_from(NAMES)))

    def run(self, op: str) -> str | None:
        """Apply ``op`` if the tree allows it; return what was done (None: nothing)."""
        nodes = self.nodes()
        files = [p for p, n in nodes.items() if n[0] == "file"]
        dirs = [p for p, n in nodes.items() if n[0] == "dir"]
        if (
            op
            in {
                "setcap",
                "overwrite",
                "append",
                "insert",
                "write_at",
                "copy_within",
                "truncate",
                "rename_file",
                "chmod_file",
            }
            and not files
        ):
            op = "create"
        if op in {"rename_dir", "chmod_dir"} and not dirs:
            op = "mkdir"
        if op in {"delete", "chown", "xattr"} and not nodes:
            op = "create"
        if op == "create":
            path = self.new_path(nodes)
            if path in nodes and nodes[path][0] != "file":
                return None
            data = self.draw(contents)
            with open(self.abspath(path), "wb") as f:
                f.write(data)
            return f"create {path!r} {len(data)}"
        if op in {"overwrite", "append", "insert", "write_at"}:
            path = self.pick_prefer_capped(files, nodes)
            old = nodes[path][2]
            data = self.draw(contents)
            if op == "overwrite":
                new = data
            elif op == "append":
                new = old + data
            elif op == "insert":
                at = self.draw(st.integers(0, len(old)))
                new = old[:at] + data[:300] + old[at:]
            else:
                at = self.draw(st.integers(0, len(old)))
                chunk = data[:200]
                new = old[:at] + chunk + old[at + len(chunk) :]
            # In place (same inode), as an editor that rewrites would not keep it.
            with open(self.abspath(path), "r+b") as f:
                f.write(new)
                f.truncate(len(new))
            return f"{op} {path!r} {len(old)}->{len(new)}"
        if op == "copy_within":  # ``dd conv=notrunc`` of the file onto itself: bytes move
            path = self.pick_prefer_capped(files, nodes)
            old = nodes[path][2]
            if len(old) < 2:
                return None
            length = self.draw(st.integers(1, len(old) // 2))
            src, dst = (self.draw(st.integers(0, len(old) - length)) for _ in range(2))
            fd = os.open(self.abspath(path), os.O_WRONLY)
            try:
                os.pwrite(fd, old[src : src + length], dst)
            finally:
                os.close(fd)
            return f"copy_within {path!r} {src}+{length} -> {dst}"
        if op == "truncate":
            path = self.pick_prefer_capped(files, nodes)
            size = self.draw(st.integers(0, len(nodes[path][2]) + 1500))
            os.truncate(self.abspath(path), size)
            return f"truncate {path!r} {size}"
        if op == "rename_file":
            src = self.pick(files)
            dst = self.new_path(nodes)
            if dst == src or (dst in nodes and nodes[dst][0] == "dir"):
                return None
            if dst in nodes:
                self.bury(dst)  # what the rename replaces
            os.rename(self.abspath(src), self.abspath(dst))
            return f"rename {src!r} -> {dst!r}"
        if op == "rename_dir":
            src = self.pick(dirs)
            dst = self.new_path(nodes)
            if dst in nodes or dst == src or dst.startswith(src + b"/"):
                return None
            os.rename(self.abspath(src), self.abspath(dst))
            return f"rename dir {src!r} -> {dst!r}"
        if op == "delete":
            path = self.pick(list(nodes))
            self.bury(path)
            return f"delete {path!r}"
        if op == "mkdir":
            path = self.new_path(nodes)
            if path in nodes:
                return None
            os.mkdir(self.abspath(path))
            return f"mkdir {path!r}"
        if op == "symlink":
            path = self.new_path(nodes)
            if path in nodes:
                return None
            target = self.draw(st.sampled_from(LINK_TARGETS))
            os.symlink(target, self.abspath(path))
            return f"symlink {path!r} -> {target!r}"
        if op == "chmod_file":
            path = self.pick(files)
            mode = self.draw(st.sampled_from(FILE_MODES))
            os.chmod(self.abspath(path), mode)
            return f"chmod {path!r} {mode:o}"
        if op == "chmod_dir":
            path = self.pick(dirs)
            mode = self.draw(st.sampled_from(DIR_MODES))
            os.chmod(self.abspath(path), mode)
            return f"chmod dir {path!r} {mode:o}"
        if op == "chown":  # a file, a directory or a link itself
            path = self.pick_prefer_capped(list(nodes), nodes)
            uid, gid = self.draw(st.sampled_from(OWNERS))
            os.chown(self.abspath(path), uid, gid, follow_symlinks=False)
            return f"chown {path!r} {uid}:{gid}"
        if op == "setcap":  # then writes, truncations and chowns may drop it
            path = self.pick(files)
            value = self.draw(st.sampled_from(CAPABILITIES))
            os.setxattr(self.abspath(path), CAPABILITY, value)
            STATS["xattr ops"] += 1
            return f"setcap {path!r} {value.hex()}"
        if op == "root":  # the root's own metadata: a chmod, an owner, an attribute
            root = self.master
            STATS["root ops"] += 1
            what = self.draw(st.sampled_from(["chmod", "xattr", *(["chown"] if OWNERS_OK else [])]))
            if what == "chmod":
                mode = self.draw(st.sampled_from(DIR_MODES))
                os.chmod(root, mode)
                return f"chmod the root {mode:o}"
            if what == "chown":
                uid, gid = self.draw(st.sampled_from(OWNERS))
                os.chown(root, uid, gid)
                return f"chown the root {uid}:{gid}"
            name = self.draw(st.sampled_from(XATTR_NAMES["dir"]))
            STATS["xattr ops"] += 1
            if name in read_xattrs(root) and self.draw(st.booleans()):
                os.removexattr(root, name)
                return f"removexattr the root {name}"
            value = self.draw(
                st.sampled_from(
                    DIR_ACLS if name == "system.posix_acl_access" else XATTR_VALUES[name]
                )
            )
            os.setxattr(root, name, value)
            return f"setxattr the root {name}={value.hex()}"
        if op == "xattr":  # set one, or remove one it has
            path = self.pick(list(nodes))
            kind = nodes[path][0]
            if not XATTR_NAMES[kind]:
                return None
            name = self.draw(st.sampled_from(XATTR_NAMES[kind]))
            STATS["xattr ops"] += 1
            if name in dict(nodes[path][-2]) and self.draw(st.booleans()):
                os.removexattr(self.abspath(path), name, follow_symlinks=False)
                return f"removexattr {path!r} {name}"
            directory = kind == "dir" and name == "system.posix_acl_access"
            value = self.draw(st.sampled_from(DIR_ACLS if directory else XATTR_VALUES[name]))
            os.setxattr(self.abspath(path), name, value, follow_symlinks=False)
            return f"setxattr {path!r} {name}={value.hex()}"
        raise AssertionError(op)


# -- checks -----------------------------------------------------------------------------------


def check_rewinds(sc: Scenario, replica_root: str, order: list[Recorded], floor: int = 0) -> None:
    """(a) Rewinding r1 to each point, in the drawn order, leaves exactly that point's tree.

    Below ``floor`` (a trim's position) a rewind back is refused, the replica untouched.
    """
    for rec in order:
        applied = sc.statistics().replicas["r1"].applied_position
        if rec.point.position < floor and rec.point.position < applied:
            before = snapshot(replica_root)
            with pytest.raises(RewindUnreachableError):
                sc.rewind("r1", rec.point)
            assert snapshot(replica_root) == before
            STATS["refused"] += 1
            continue
        held = sc.rewind("r1", rec.point)
        assert held == rec.point.position
        assert_tree(replica_root, rec.tree, f"r1 rewound to {rec.point.name}@{rec.point.position}")
        assert sc._appliers["r1"].undo.check() == []  # what each record holds, no more
        STATS["rewinds"] += 1


def check_path_replay(eng: Engine, sc: Scenario, rec: Recorded, path: bytes, scratch: str) -> None:
    """``replay(path=)`` gives exactly the subtree at ``path`` of the point's tree."""

    def under(tree: dict[bytes, Node]) -> dict[bytes, Node]:
        return {p: n for p, n in tree.items() if p == path or p.startswith(path + b"/")}

    out = tempfile.mkdtemp(prefix="path-replay-", dir=scratch)
    os.rmdir(out)
    want = under(rec.tree)
    if not want:  # nothing there then: an error, never an empty tree
        with pytest.raises(NoFileAtError):
            eng.replay(sc.name, to=out, position=rec.point.position, path=os.fsdecode(path))
        assert not os.path.exists(out)
        STATS["path replays"] += 1
        return
    eng.replay(sc.name, to=out, position=rec.point.position, path=os.fsdecode(path))
    got = under(snapshot(out)) if os.path.exists(out) else {}
    assert got == want, f"replay of {path!r} at {rec.point.name}: " + "; ".join(
        differences(want, got)[:10]
    )
    STATS["path replays"] += 1


def check_replays(
    eng: Engine, sc: Scenario, replica_root: str, records: list[Recorded], scratch: str
) -> None:
    """(b) A replay rebuilds each point's tree from the journal and leaves the replica alone."""
    replica_before = snapshot(replica_root)
    stats_before = sc.statistics().replicas["r1"]
    for i, rec in enumerate(records):
        out = os.path.join(scratch, f"replay-{i}")
        # Every other one as a long journal is replayed: one identity at a time.
        fold_max, forensic._FOLD_MAX = forensic._FOLD_MAX, 0 if i % 2 else forensic._FOLD_MAX
        try:
            result = eng.replay(sc.name, to=out, position=rec.point.position)
        finally:
            forensic._FOLD_MAX = fold_max
        assert result.position == rec.point.position
        assert_tree(out, rec.tree, f"replay at {rec.point.name}@{rec.point.position}")
        files = sum(1 for n in rec.tree.values() if n[0] == "file")
        assert (result.files, result.dirs, result.links) == (
            files,
            sum(1 for n in rec.tree.values() if n[0] == "dir"),
            sum(1 for n in rec.tree.values() if n[0] == "symlink"),
        )
        STATS["replays"] += 1
        # One path of this point's tree, and one of another point's (maybe gone or
        # never there by then): read by identity, it must give the same subtree.
        for j, tree in enumerate((rec.tree, records[(i + 1) % len(records)].tree)):
            paths = sorted(p for p in tree if p != ROOT)
            if paths:
                check_path_replay(eng, sc, rec, paths[(7 * i + j) % len(paths)], scratch)
    assert snapshot(replica_root) == replica_before, "a replay changed the replica"
    stats_after = sc.statistics().replicas["r1"]
    assert stats_after.applied_position == stats_before.applied_position
    assert stats_after.undo_records == stats_before.undo_records


def check_diff(result: DiffResult, a: dict[bytes, Node], b: dict[bytes, Node]) -> None:
    """(c) ``diff(a, b)`` against the recorded trees at a and b.

    The diff follows file *identities* (a rename is a rename); the trees only
    know *paths*. Translated to paths, with ``added* = added + renamed targets``
    and ``removed* = removed + renamed sources``:

    - every added* path exists at b and every removed* path existed at a (the
      diff invents nothing);
    - paths only at b are exactly the added* paths that were not at a, and paths
      only at a are exactly the removed* paths gone at b (a path at both ends may
      still be removed* and added*: deleted, or moved away, and re-created);
    - a path that is a file at both ends with different bytes is in
      ``modified`` unless its identity changed (then it is in added*): modified
      is a superset, since bytes may be written and written back; its byte
      ranges are sorted and cover every byte that differs between the ends
      (and the bytes one end has past the other's size), whether a write, a
      truncation or a delta (bytes moved within the file) changed it;
    - ``modified`` names files that exist at b; a path whose permission bits
      changed (same kind at both ends) is in metadata, modified or added*; so
      is a path whose owner or extended attributes changed.
    """
    # The roots' own metadata: reported where it differs (the tree has one root).
    assert result.roots == (["."] if a[ROOT] != b[ROOT] else []), (result.roots, a[ROOT], b[ROOT])
    a = {p: n for p, n in a.items() if p != ROOT}
    b = {p: n for p, n in b.items() if p != ROOT}
    dec = os.fsencode
    added = {dec(p) for p in result.added} | {dec(p) for p in result.renamed.values()}
    removed = {dec(p) for p in result.removed} | {dec(p) for p in result.renamed}
    modified = {dec(p) for p in result.modified}
    metadata = {dec(p) for p in result.metadata}
    assert added <= set(b), f"added but not there at b: {sorted(added - set(b))}"
    assert removed <= set(a), f"removed but not there at a: {sorted(removed - set(a))}"
    assert set(b) - set(a) == added - set(a), "paths only at b vs added"
    assert set(a) - set(b) == removed - set(b), "paths only at a vs removed"
    both = set(a) & set(b)
    changed = {p for p in both if a[p][0] == b[p][0] == "file" and a[p][2] != b[p][2]}
    assert changed - added <= modified, (
        f"content changed, not in modified: {sorted(changed - added - modified)}"
    )
    assert all(b[p][0] == "file" for p in modified), "modified names a non-file"
    for path, ranges in result.modified.items():
        assert all(offset >= 0 and length >= 0 for offset, length in ranges), (path, ranges)
        assert ranges == sorted(ranges), (path, ranges)
        p = dec(path)
        if p not in added and a[p][0] == "file":  # the same identity at both ends
            missed = uncovered(a[p][2], b[p][2], ranges)
            assert not missed, f"{path}: bytes {missed} differ outside the ranges {ranges}"
    moded = {p for p in both if a[p][0] == b[p][0] != "symlink" and a[p][1] != b[p][1]}
    moded |= {p for p in both if a[p][0] == b[p][0] and a[p][-1] != b[p][-1]}  # the owner
    moded |= {p for p in both if a[p][0] == b[p][0] and a[p][-2] != b[p][-2]}  # the xattrs
    assert moded - added <= metadata | modified, (
        f"mode, owner or xattrs changed, not reported: {sorted(moded - added - metadata - modified)}"
    )


def uncovered(old: bytes, new: bytes, ranges: list[list[int]]) -> list[int]:
    """The first offsets whose byte differs (or exists at one end only) outside ``ranges``."""
    size = max(len(old), len(new))
    differs = np.ones(size, dtype=np.bool_)
    common = min(len(old), len(new))
    differs[:common] = np.frombuffer(old[:common], np.uint8) != np.frombuffer(
        new[:common], np.uint8
    )
    for offset, length in ranges:
        differs[offset : offset + length] = False
    return [int(i) for i in np.flatnonzero(differs)[:5]]


def check_diffs(eng: Engine, sc: Scenario, records: list[Recorded]) -> None:
    """Every pair of points, both ways: a diff from a later point leads back (a rewind preview)."""
    for i, first in enumerate(records):
        for second in records[i:]:
            result = eng.diff(sc.name, first.point.position, second.point.position)
            if first.point.position == second.point.position:
                assert not (result.added or result.removed or result.modified or result.renamed)
            check_diff(result, first.tree, second.tree)
            back = eng.diff(sc.name, second.point.position, first.point.position)
            check_diff(back, second.tree, first.tree)
            STATS["diffs"] += 2


def check_histories(eng: Engine, sc: Scenario, records: list[Recorded]) -> None:
    """(d) ``history(p)`` tells where each identity that ever had ``p`` was, at any point.

    Read as a story (created at a path, renamed, moved with a renamed directory,
    deleted, extended attributes set), the history of every path of every
    recorded tree puts some identity at that path at that point, with the
    extended attributes the tree had there (none until an "xattrs" entry gives
    the whole set), and puts no identity at a path the tree did not have then.
    """
    # The root's own: its last change by each point is what the point's tree has.
    changes = eng.history(sc.name, ".")
    assert {e.operation for e in changes} <= {"root"}, changes
    for rec in records:
        last = [e for e in changes if e.position <= rec.point.position][-1:]
        assert last, f"history('.') has nothing by {rec.point.name}"
        got = (last[0].mode, {n: bytes.fromhex(v) for n, v in (last[0].xattrs or {}).items()})
        want = (rec.tree[ROOT][1], dict(rec.tree[ROOT][2]))
        assert got == want, f"history('.') at {rec.point.name}: {got} != {want}"
        assert tuple(last[0].owner or ()) == rec.tree[ROOT][3]
    paths = {p for rec in records for p in rec.tree if p and p != ROOT}
    for path in paths:
        entries = eng.history(sc.name, os.fsdecode(path))
        for rec in records:
            where: dict[str, str | None] = {}
            xattrs: dict[str, tuple[tuple[str, bytes], ...]] = {}
            for e in entries:
                if e.position > rec.point.position:
                    break
                if e.operation == "created":
                    where[e.file_id] = e.path
                    xattrs[e.file_id] = ()
                elif e.operation == "xattrs":
                    assert e.xattrs is not None, e
                    xattrs[e.file_id] = tuple(
                        sorted((n, bytes.fromhex(v)) for n, v in e.xattrs.items())
                    )
                elif e.operation == "renamed":
                    assert where.get(e.file_id) == e.path, (path, e)
                    where[e.file_id] = e.new_path
                elif e.operation == "deleted":
                    where[e.file_id] = None
            at = {os.fsencode(p) for p in where.values() if p is not None}
            if path in rec.tree:
                assert path in at, f"history({path!r}) loses it at {rec.point.name}: {entries}"
                here = [f for f, p in where.items() if p is not None and os.fsencode(p) == path]
                assert [xattrs.get(f) for f in here] == [rec.tree[path][-2]], (
                    f"history({path!r}) xattrs at {rec.point.name}: {entries}"
                )
            assert at <= set(rec.tree), (path, rec.point.name, at - set(rec.tree))
            STATS["histories"] += 1


# -- the property -----------------------------------------------------------------------------


def restart(sc: Scenario) -> None:
    """Stop replicating, or start again: a synchronization of the active replicas.

    While stopped, changes and points are journaled and the replicas lag; the
    start takes them from the position they hold to the master's state by a
    resync, not by the events between: the points set meanwhile must stay
    exact.
    """
    if sc.state != "Stopped":
        sc.stop()
        note("stop")
        return
    held = sc.statistics().replicas
    lagged = [r for r, s in held.items() if not s.suspended and s.backlog_events]
    sc.start()
    note(f"start: {lagged} resynchronized while behind")
    STATS["lagged"] += bool(lagged)


def run_script(
    sc: Scenario, script: Script, records: list[Recorded], steps: list[str], master: str
) -> None:
    """Apply ``steps`` to the master; a "point" step (and the end) records a rewind point."""
    for op in [*steps, "point"]:
        if op == "point":
            point = sc.set_rewind_point(f"p{len(records)}")
            records.append(Recorded(point, snapshot(master)))
            note(f"point {point.name}@{point.position}")
            continue
        if op == "trim":
            policy = RetentionPolicy(
                max_bytes=script.draw(st.integers(0, 20_000)),
                min_points=script.draw(st.integers(1, 3)),
            )
            trimmed = sc.trim_undo(policy)["r1"].trim_upto
            script.floor = max(script.floor, trimmed)
            note(f"trim {policy} -> r1 up to {trimmed}")
            STATS["trims"] += bool(trimmed)
            continue
        if op == "restart":
            restart(sc)
            continue
        done = script.run(op)
        if done is not None:
            note(done)
            event(op)
    STATS["points"] += len(records)
    if sc.state == "Stopped":
        restart(sc)
    sc.wait_replicated()
    assert [r.point.position for r in records] == sorted(r.point.position for r in records)


def run_example(
    block_size: int,
    initial: list[tuple[bytes, bytes]],
    steps: list[str],
    data: st.DataObject,
    *,
    resume_round: bool,
) -> None:
    STATS["examples"] += 1
    base = tempfile.mkdtemp(prefix="xo-rewindprop-")
    master, r1, r2 = (os.path.join(base, n) for n in ("master", "r1", "r2"))
    os.mkdir(master)
    for name, content in initial:
        full = os.path.join(os.fsencode(master), name)
        parent = os.path.dirname(full)
        if os.path.isfile(parent) or os.path.isdir(full):
            continue  # the name is taken by the other kind
        os.makedirs(parent, exist_ok=True)
        with open(full, "wb") as f:
            f.write(content)
    eng = Engine.open(os.path.join(base, "state"), durability="nosync")
    try:
        sc = eng.create_scenario(
            "rw", master=master, replicas={"r1": r1, "r2": r2}, block_size=block_size
        )
        sc.start()
        start = next(p for p in reversed(sc.rewind_points()) if p.kind == "sync")
        records = [Recorded(start, snapshot(master))]
        graveyard = os.path.join(base, "graveyard")
        os.mkdir(graveyard)
        script = Script(master, graveyard, data)
        run_script(sc, script, records, steps, master)

        order = data.draw(st.permutations(records), label="rewind order")
        order += data.draw(st.lists(st.sampled_from(records), max_size=4), label="and then")
        check_rewinds(sc, r1, order, script.floor)
        if resume_round:
            # Back into replication (a block-level resync), more changes and points, then
            # every point again: old ones now lie in the gaps the rewinds above left.
            sc.resume("r1")
            sc.wait_replicated()
            assert_tree(r1, records[-1].tree, "r1 resumed")
            more = data.draw(st.lists(st.sampled_from(OPERATIONS), max_size=12), label="more")
            run_script(sc, script, records, more, master)
            order = data.draw(st.permutations(records), label="rewind order after resume")
            floor = script.floor
            for rec in order:
                check_rewinds(sc, r1, [rec], floor)
                if data.draw(st.booleans(), label="resume after it"):
                    sc.resume("r1")
                    sc.wait_replicated()
                    assert_tree(r1, records[-1].tree, "r1 resumed again")
                if data.draw(st.booleans(), label="trim now"):
                    # Retention keeps the newest ``kept`` points; older ones become
                    # unreachable backwards, and the before-images only they held go.
                    kept = data.draw(st.integers(1, len(records)), label="points kept")
                    decisions = sc.trim_undo(RetentionPolicy(max_bytes=1, min_points=kept))
                    floor = max(floor, decisions["r1"].trim_upto)
                    STATS["trims"] += 1
                    for name in ("r1", "r2"):
                        assert sc._appliers[name].undo.check() == []
        else:
            check_replays(eng, sc, r1, records, base)
            check_diffs(eng, sc, records)
            check_histories(eng, sc, records)
        # r2 kept replicating through all of it.
        sc.wait_replicated()
        assert_tree(r2, records[-1].tree, "r2 (never rewound)")
        assert sc._appliers["r2"].undo.check() == []
    finally:
        eng.close()
        shutil.rmtree(base, ignore_errors=True)


EXAMPLES = int(os.environ.get("REWIND_EXAMPLES", "400"))
block_sizes = st.sampled_from([512, 512, 4096])
# Top-level files, and files in a directory from the start: so that directories
# whose files are journaled already get renamed, deleted and rewound.
initial_paths = st.one_of(
    st.sampled_from(NAMES),
    st.builds(b"/".join, st.tuples(st.sampled_from(NAMES[:3]), st.sampled_from(NAMES))),
)
initials = st.lists(st.tuples(initial_paths, contents), max_size=4)
scripts = st.lists(st.sampled_from(OPERATIONS), min_size=1, max_size=22)
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SLOW_OK)
@given(block_size=block_sizes, initial=initials, steps=scripts, data=st.data())
def test_rewind_points_are_exact_states(
    block_size: int, initial: list[tuple[bytes, bytes]], steps: list[str], data: st.DataObject
) -> None:
    run_example(block_size, initial, steps, data, resume_round=False)


@settings(max_examples=max(EXAMPLES // 4, 10), deadline=None, suppress_health_check=SLOW_OK)
@given(block_size=block_sizes, initial=initials, steps=scripts, data=st.data())
def test_rewind_points_stay_exact_across_resumes(
    block_size: int, initial: list[tuple[bytes, bytes]], steps: list[str], data: st.DataObject
) -> None:
    run_example(block_size, initial, steps, data, resume_round=True)


def teardown_module() -> None:
    print(f"\nrewind properties: {STATS}")
