"""Extended attributes on real trees: POSIX ACLs, file capabilities, user and trusted ones.

A replica of a Samba share without its NT ACLs, or of ``/usr/bin`` without
``ping``'s capability, is not a copy a server can fail over to. Each test
sets attributes with ``os.setxattr`` on a real ext4 tree and checks the
replica, a rewind, a replay and the history against the master.

The kernel drops ``security.capability`` when a file is written or chowned:
the tests that write after a ``setcap`` check that a rewind across that write
gives the capability back.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from xoengine.cli import main
from xoengine.events import AlertRaised, ContentReplaced, XattrsChanged
from xoengine.testing import (
    CreateFile,
    MakeDir,
    SetXattr,
    Symlink,
    TreeBuilder,
    WriteAt,
    assert_trees_equal,
    posix_acl,
    snapshot_contents,
    temporary_engine,
)
from xoengine.tree import ReplicaTree
from xoengine.walk import read_xattrs

if TYPE_CHECKING:
    from collections.abc import Iterator

    from xoengine.engine import Engine, Scenario

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="trusted.* and capabilities need root")

CAP_NET_RAW = bytes.fromhex("0100000200200000000000000000000000000000")  # v2, cap_net_raw+p
CAP_NET_ADMIN = bytes.fromhex("0100000200100000000000000000000000000000")  # v2, cap_net_admin+p


def acl(*users: tuple[int, int]) -> bytes:
    """An ACL: the owner rw, named users ``(uid, perms)``, group and others r."""
    return posix_acl(6, 4, 4, users=users, mask=7 if users else None)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with temporary_engine(tmp_path) as eng:
        yield eng


def _scenario(engine: Engine, tmp_path: Path, **options: Any) -> tuple[Scenario, TreeBuilder]:
    master = tmp_path / "master"
    master.mkdir(exist_ok=True)
    sc = engine.create_scenario(
        "xa",
        master=master,
        replicas={"r1": tmp_path / "r1", "r2": tmp_path / "r2"},
        **options,
    )
    return sc, TreeBuilder(master)


def _share(master: TreeBuilder) -> None:
    master.apply_all(
        [
            MakeDir("share"),
            SetXattr("share", "system.posix_acl_default", acl((1000, 7))),
            SetXattr("share", "user.department", b"finance"),
            CreateFile("share/report.txt", b"quarterly figures\n" * 200),
            SetXattr("share/report.txt", "system.posix_acl_access", acl((1000, 6))),
            SetXattr("share/report.txt", "security.NTACL", b"\x04\x00" + bytes(range(200))),
            CreateFile("bin/ping", b"\x7fELF" + bytes(8000)),
            SetXattr("bin/ping", "security.capability", CAP_NET_RAW),
            Symlink("share/latest", "report.txt"),
            SetXattr("share/latest", "trusted.origin", b"link"),
        ]
    )


def test_xattrs_are_replicated_rewound_replayed_and_in_the_history(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sc, master = _scenario(engine, tmp_path)
    _share(master)
    sc.start()  # the initial synchronization carries them
    assert_trees_equal(master.root, tmp_path / "r1")  # extended attributes included
    assert read_xattrs(str(tmp_path / "r1" / "bin" / "ping")) == {
        "security.capability": CAP_NET_RAW
    }
    assert not sc.difference_report("r1", verify=True)["differences"]
    before = sc.set_rewind_point("before")
    was = snapshot_contents(tmp_path / "r1")
    # Changed, removed and added, each alone (only the ctime moves), then with bytes.
    master.apply_all(
        [
            SetXattr("share", "user.department", b"audit"),
            SetXattr("share/report.txt", "security.NTACL", None),
            SetXattr("share/report.txt", "user.reviewed", b"yes"),
            SetXattr("bin/ping", "security.capability", CAP_NET_ADMIN),
            SetXattr("share/latest", "trusted.origin", b"moved"),
        ]
    )
    assert sc.capture().metadata == 8  # the ctime moved (metadata), then the xattrs
    sc.wait_replicated()
    assert_trees_equal(master.root, tmp_path / "r1")
    sc.suspend("r2")
    master.apply(WriteAt("bin/ping", 100, b"patched"))  # the kernel drops the capability
    assert read_xattrs(os.path.join(master.root, "bin", "ping")) == {}
    master.apply(CreateFile("share/new.txt", b"new"))  # inherits the default ACL
    master.apply(SetXattr("share", "user.department", b"legal"))
    sc.capture()
    sc.wait_replicated()
    assert_trees_equal(master.root, tmp_path / "r1")
    report = sc.difference_report("r2", verify=True)  # suspended: it names them
    assert report["differences"]["share"] == "extended attributes user.department"
    now = snapshot_contents(tmp_path / "r1")
    # Replays give each point's attributes; a rewind puts them back (the capability
    # too, though undoing the write's bytes makes the kernel drop it again).
    engine.replay(sc, to=tmp_path / "then", position=before.position)
    assert snapshot_contents(tmp_path / "then") == was
    engine.replay(sc, to=tmp_path / "end")
    assert snapshot_contents(tmp_path / "end") == now
    sc.rewind("r1", before)
    assert snapshot_contents(tmp_path / "r1") == was
    sc.resume("r1")  # the block-level resync brings them back too
    assert snapshot_contents(tmp_path / "r1") == now
    sc.resume("r2")
    sc.wait_replicated()
    assert snapshot_contents(tmp_path / "r2") == now
    history = engine.history(sc, "bin/ping")
    sets = [e.xattrs for e in history if e.operation == "xattrs"]
    assert sets == [
        {"security.capability": CAP_NET_RAW.hex()},
        {"security.capability": CAP_NET_ADMIN.hex()},
        {},
    ]
    diff = engine.diff(sc, before)
    assert "share" in diff.metadata and "bin/ping" in diff.modified
    state = str(engine.store.path)
    engine.close()
    capsys.readouterr()
    assert main(["history", state, "xa", "share/report.txt"]) == 0
    out = capsys.readouterr().out
    # Each value by a fingerprint since review 24 (L8): a change of a value shows.
    assert re.search(
        r"xattrs=security\.NTACL#[0-9a-f]{8},system\.posix_acl_access#[0-9a-f]{8}", out
    )
    assert re.search(r"xattrs=system\.posix_acl_access#[0-9a-f]{8},user\.reviewed#[0-9a-f]{8}", out)
    capsys.readouterr()
    assert main(["history", state, "xa", "bin/ping"]) == 0
    caps = re.findall(r"xattrs=security\.capability#([0-9a-f]{8})", capsys.readouterr().out)
    assert len(caps) == 2 and caps[0] != caps[1]  # two values of one attribute, told apart


@pytest.mark.parametrize("how", ["write", "chown", "truncate"])
def test_a_rewind_across_a_write_gives_the_capability_back(
    engine: Engine, tmp_path: Path, how: str
) -> None:
    # Was a bug class to rule out: undoing the write restores bytes (the kernel then
    # drops the capability again); the xattrs undone after it must put it back.
    sc, master = _scenario(engine, tmp_path)
    master.apply_all([CreateFile("tool", bytes(20000)), SetXattr("tool", "user.a", b"1")])
    sc.start()
    master.apply(SetXattr("tool", "security.capability", CAP_NET_RAW))
    sc.capture()
    sc.wait_replicated()
    point = sc.set_rewind_point("capable")
    was = snapshot_contents(tmp_path / "r1")
    assert was[b"tool"][3] == (("security.capability", CAP_NET_RAW), ("user.a", b"1"))
    full = os.path.join(master.root, "tool")
    for step in range(3):  # several changes: the rewind coalesces them into one run
        if how == "write":
            master.apply(WriteAt("tool", 4096 * step, b"changed"))
        elif how == "chown":
            os.chown(full, 1000 + step, 1000)
        else:
            os.truncate(full, 20000 - 1000 * (step + 1))
        sc.capture()
    assert read_xattrs(full) == {"user.a": b"1"}
    sc.wait_replicated()
    assert_trees_equal(master.root, tmp_path / "r1")
    sc.rewind("r1", point)
    assert snapshot_contents(tmp_path / "r1") == was
    out = tmp_path / "out"
    engine.replay(sc, to=out, position=point.position)
    assert snapshot_contents(out) == was


def test_the_undo_log_keeps_one_copy_of_a_files_attribute_set(
    engine: Engine, tmp_path: Path
) -> None:
    """Each write's before-image names the file's set; an NT ACL is not stored per write."""
    ntacl = bytes(range(256)) * 12  # 3 KiB, as a Samba share's NT ACL can be
    sc, master = _scenario(engine, tmp_path)
    master.apply_all([CreateFile("db", bytes(65536)), SetXattr("db", "security.NTACL", ntacl)])
    sc.start()
    point = sc.set_rewind_point("before")
    was = snapshot_contents(tmp_path / "r1")
    undo = sc._appliers["r1"].undo
    count, frames = undo.size()
    writes = 40
    for step in range(writes):
        master.apply(WriteAt("db", 512 * step, b"page %d" % step))
        sc.capture()
    sc.wait_replicated()
    count_after, frames_after = undo.size()
    assert count_after - count >= writes
    assert frames_after - frames < writes * 400  # records of ~100-300 bytes: no ACL inside
    records = undo.records(after=point.position)
    held = [r.args["xattrs"] for r in records if r.op == "bytes"]
    assert held == [{"security.NTACL": ntacl}] * len(held) and held
    # The budget counts each write's 4 KiB block and its record, not the set again.
    sizes = dict(undo.position_sizes())
    assert max(sizes[r.position] for r in records) < 4096 + 1024
    master.apply(SetXattr("db", "security.NTACL", b"changed"))
    sc.capture()
    sc.wait_replicated()
    sc.rewind("r1", point)
    assert snapshot_contents(tmp_path / "r1") == was


def test_a_chmod_of_an_empty_file_with_a_capability_is_not_a_write(
    engine: Engine, tmp_path: Path
) -> None:
    # Was a bug (found by the replication property): an empty file whose stat moved
    # was journaled as a write of nothing, which says the kernel dropped the file's
    # capability: the master state forgot its set, and journaled it again later.
    sc, master = _scenario(engine, tmp_path)
    master.apply_all(
        [CreateFile("empty", b""), SetXattr("empty", "security.capability", CAP_NET_RAW)]
    )
    sc.start()
    known = sc.master_state_snapshot()["empty"][0].xattrs
    assert known > 0
    position = engine.recorder.max_notification_id() or 0
    os.chmod(os.path.join(master.root, "empty"), 0o600)
    sc.capture()
    sc.wait_replicated()
    state = sc.master_state_snapshot()["empty"][0]
    assert (state.mode, state.xattrs) == (0o600, known)
    kinds = [type(e).__name__ for _, e in engine._iter_file_events(position, "xa")]
    assert kinds == ["MetadataChanged"]
    assert_trees_equal(master.root, tmp_path / "r1")
    # Emptied again (O_TRUNC drops the capability on the master): the set follows.
    Path(master.root, "empty").write_bytes(b"")
    sc.capture()
    sc.wait_replicated()
    assert read_xattrs(os.path.join(master.root, "empty")) == {}
    assert_trees_equal(master.root, tmp_path / "r1")


def test_an_xattr_change_alone_is_captured_once(engine: Engine, tmp_path: Path) -> None:
    sc, master = _scenario(engine, tmp_path)
    master.apply_all([CreateFile("d/a", b"a"), Symlink("d/l", "a")])
    sc.start()
    assert sc.capture().events == 0
    master.apply(SetXattr("d/a", "user.tag", b"x"))
    result = sc.capture()
    assert (result.events, result.metadata) == (2, 2)  # the ctime moved (metadata), the xattrs
    assert sc.capture().events == 0
    events = [e for _, e in engine._iter_events((XattrsChanged,))]
    assert [(e.path, e.xattrs) for e in events] == [("d/a", {"user.tag": b"x"})]


def test_a_master_state_from_before_xattrs_learns_them_once(engine: Engine, tmp_path: Path) -> None:
    # Master-state entries written before extended attributes were recorded hold -1:
    # the next capture journals each path's set once (empty ones too), then nothing.
    sc, master = _scenario(engine, tmp_path)
    master.apply_all([CreateFile("d/a", b"a"), Symlink("d/l", "a")])
    sc.start()
    master.apply(SetXattr("d/a", "user.tag", b"x"))
    sc.capture()

    def forget(txn: Any) -> None:
        for path, state in list(sc.manifest.items(txn)):
            sc.manifest.put(txn, path, state.evolve(xattrs=-1))

    engine.store.write(forget)
    sc.capture_engine.forget_master_state()
    assert sc.capture().metadata == 3  # d, d/a and d/l
    assert sc.capture().events == 0
    sc.wait_replicated()
    assert_trees_equal(master.root, tmp_path / "r1")


def test_the_synchronization_brings_xattrs_and_keeps_their_before_images(
    engine: Engine, tmp_path: Path
) -> None:
    sc, master = _scenario(engine, tmp_path)
    _share(master)
    sc.start()
    sc.stop()
    # The replica drifts (an administrator's hand): extra, changed and missing ones.
    replica = tmp_path / "r1"
    os.setxattr(replica / "share" / "report.txt", "user.stray", b"1")
    os.removexattr(replica / "bin" / "ping", "security.capability")
    os.setxattr(replica / "share", "user.department", b"wrong")
    drifted = snapshot_contents(replica)
    point = sc.set_rewind_point("drifted")
    for level in ("file", "block"):
        sc.synchronize(level=level, replica="r1")
        assert_trees_equal(master.root, replica)
        if level == "file":
            run = sc.sync_report("r1")["runs"][-1]
            assert run["files_changed"] == 3
            sc.rewind("r1", point)  # the sync's before-images hold the drifted set
            assert snapshot_contents(replica) == drifted
    sc.synchronize(level="file", replica="r1")
    assert sc.sync_report("r1")["runs"][-1]["files_changed"] == 0


def test_a_tree_that_cannot_take_a_namespace_leaves_it_and_does_not_compare_it(
    tmp_path: Path,
) -> None:
    tree = ReplicaTree(str(tmp_path / "t"), fsync=False)
    (tmp_path / "t" / "f").write_bytes(b"f")
    tree.xattrs_refused.add("trusted")  # as for a user who is not root
    assert tree.set_xattrs("f", {"trusted.x": b"1", "user.y": b"2"})
    assert read_xattrs(str(tmp_path / "t" / "f")) == {"user.y": b"2"}
    assert tree.comparable({"trusted.x": b"1", "user.y": b"2"}) == {"user.y": b"2"}
    os.setxattr(tmp_path / "t" / "f", "trusted.kept", b"k")
    assert not tree.set_xattrs("f", {"user.y": b"2"})  # trusted.kept: not this tree's to remove
    assert "trusted.kept" in read_xattrs(str(tmp_path / "t" / "f"))
    assert tree.get_xattrs("missing") is None
    assert not tree.set_xattrs("missing/deeper", {"user.y": b"2"})
    assert not (tmp_path / "t" / "missing").exists()  # no parent made for it


def test_a_delta_keeps_the_files_xattrs(engine: Engine, tmp_path: Path) -> None:
    # Was a bug (found by the replication property): a delta rebuilds the replica's
    # file into a new inode, which came out without the attributes the master's
    # file kept (its bytes moved in place there). Applied, rewound and replayed.
    sc, master = _scenario(engine, tmp_path, block_size=512)
    data = bytes(range(256)) * 40
    master.apply_all([CreateFile("f", data), SetXattr("f", "user.a", b"kept")])
    sc.start()
    point = sc.set_rewind_point("before")
    was = snapshot_contents(tmp_path / "r1")
    master.apply(WriteAt("f", 0, b"!" + data))  # every byte shifted by one: a delta
    sc.capture()
    sc.wait_replicated()
    assert [type(e) for _, e in engine._iter_events((ContentReplaced, XattrsChanged))] == [
        XattrsChanged,
        ContentReplaced,  # the set did not change: no second XattrsChanged
    ]
    assert_trees_equal(master.root, tmp_path / "r1")
    now = snapshot_contents(tmp_path / "r1")
    engine.replay(sc, to=tmp_path / "end")
    assert snapshot_contents(tmp_path / "end") == now
    sc.rewind("r1", point)
    assert snapshot_contents(tmp_path / "r1") == was


def test_no_acl_is_handed_down_that_the_master_has_not(engine: Engine, tmp_path: Path) -> None:
    # Was a bug (found by the replication property): a path the replica makes in a
    # directory with a default ACL inherits one. Where the master's path has none
    # (made before the directory got its default ACL, or its ACL removed since),
    # nothing took it away: in the applier, in a rewind's delta, in a replay.
    sc, master = _scenario(engine, tmp_path, block_size=512)
    master.apply_all([MakeDir("sub"), SetXattr("sub", "system.posix_acl_default", acl((1000, 7)))])
    sc.start()
    data = bytes(range(256)) * 40
    master.apply_all(
        [
            CreateFile("sub/a", data),
            SetXattr("sub/a", "system.posix_acl_access", None),
            MakeDir("sub/d"),
            SetXattr("sub/d", "system.posix_acl_access", None),
            SetXattr("sub/d", "system.posix_acl_default", None),
        ]
    )
    assert read_xattrs(os.path.join(master.root, "sub", "a")) == {}
    sc.capture()
    sc.wait_replicated()
    assert_trees_equal(master.root, tmp_path / "r1")
    point = sc.set_rewind_point("plain")
    was = snapshot_contents(tmp_path / "r1")
    master.apply(WriteAt("sub/a", 0, b"!" + data))  # a delta: a new inode on the replica
    sc.capture()
    sc.wait_replicated()
    assert_trees_equal(master.root, tmp_path / "r1")
    sc.rewind("r1", point)  # undone by a delta too
    assert snapshot_contents(tmp_path / "r1") == was
    # A replay into a directory whose default ACL would hand one down to everything.
    out = tmp_path / "out"
    out.mkdir()
    os.setxattr(out, "system.posix_acl_default", acl((1001, 5)))
    engine.replay(sc, to=out, position=point.position)
    assert snapshot_contents(out) == was


@pytest.mark.parametrize("how", ["write", "chown", "truncate", "session"])
def test_a_capability_set_again_before_the_capture_stays(
    engine: Engine, tmp_path: Path, how: str
) -> None:
    # Was a bug (found by the rewind property): a binary reinstalled in place gets
    # its capability back before the capture looks, so the journal said the set
    # never changed; the replica's write (or chown) dropped it, and it stayed gone.
    sc, master = _scenario(engine, tmp_path)
    master.apply_all([CreateFile("tool", bytes(20000)), SetXattr("tool", "user.a", b"1")])
    master.apply(SetXattr("tool", "security.capability", CAP_NET_RAW))
    sc.start()
    full = os.path.join(master.root, "tool")
    if how == "write":
        master.apply(WriteAt("tool", 100, b"new build"))
    elif how == "chown":
        os.chown(full, 1000, 1000)
    elif how == "truncate":
        os.truncate(full, 10000)
    else:  # journaled as it is written: the master state learns it may have lost it
        with sc.open("tool", "r+b") as f:
            f.write(b"new build")
    assert "security.capability" not in read_xattrs(full)
    master.apply(SetXattr("tool", "security.capability", CAP_NET_RAW))
    sc.capture()
    # The set is the one known, but the replica's write (or chown) drops the
    # capability as the master's did: it is journaled again, and applied after it.
    again = [e for _, e in engine._iter_events((XattrsChanged,))][1:]
    assert [e.xattrs for e in again] == [{"security.capability": CAP_NET_RAW, "user.a": b"1"}]
    sc.wait_replicated()
    assert_trees_equal(master.root, tmp_path / "r1")


def test_a_rewind_across_a_resyncs_chown_gives_the_capability_back(
    engine: Engine, tmp_path: Path
) -> None:
    # Was a bug (found by the rewind property): the resync after a rewind kept a
    # 'meta' before-image of mode, mtime and owner only, then its chown dropped the
    # replica's capability; rewinding over the resync put the owner back, not it.
    sc, master = _scenario(engine, tmp_path, block_size=512)
    sc.start()
    master.apply_all(
        [CreateFile("a", b"binary"), SetXattr("a", "security.capability", CAP_NET_RAW)]
    )
    p1 = sc.set_rewind_point("p1")
    os.chmod(os.path.join(master.root, "a"), 0o600)
    p2 = sc.set_rewind_point("p2")
    at_p2 = snapshot_contents(master.root)
    os.chown(os.path.join(master.root, "a"), 65534, 65534)  # the kernel drops it
    sc.set_rewind_point("p3")
    sc.wait_replicated()
    sc.rewind("r1", p1)
    sc.resume("r1")  # the resync chowns r1's file back: its capability goes with it
    sc.wait_replicated()
    assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master.root)
    sc.rewind("r1", p2)
    assert snapshot_contents(tmp_path / "r1") == at_p2


def test_an_attribute_the_replica_cannot_hold_is_left_out_not_fatal(tmp_path: Path) -> None:
    # Was a bug (found by review): ext4 answers ENOSPC for a value larger than its
    # xattr block, which stopped the applier as "disk full" though the disk was
    # not; an ACL the kernel refuses (EINVAL: here malformed, in a container one
    # naming an unmapped id) stopped it too. Each is refused by name, and only it.
    tree = ReplicaTree(str(tmp_path / "t"), fsync=False)
    (tmp_path / "t" / "f").write_bytes(b"f")
    wanted = {
        "user.big": bytes(64 * 1024),  # past the block (ENOSPC) or 64 KiB (E2BIG)
        "system.posix_acl_access": b"not an acl",
        "user.small": b"kept",
    }
    assert tree.set_xattrs("f", wanted)
    assert read_xattrs(str(tmp_path / "t" / "f")) == {"user.small": b"kept"}
    assert tree.xattrs_refused == {"user.big", "system.posix_acl_access"}
    assert tree.comparable(wanted) == {"user.small": b"kept"}
    assert not tree.set_xattrs("f", wanted)  # nothing left to change


def test_an_attribute_a_replica_leaves_out_raises_one_alert_per_name(
    engine: Engine, tmp_path: Path
) -> None:
    """An operator hears that a replica lacks an attribute before failing over to it."""
    sc, master = _scenario(engine, tmp_path)
    master.apply_all([CreateFile("doc", b"doc"), SetXattr("doc", "user.kept", b"1")])
    # As a replica run by a user refuses security.* and trusted.*: this one, user.*.
    sc._appliers["r1"].tree.xattrs_refused.add("user")
    sc.start()
    master.apply(SetXattr("doc", "user.ntacl", b"A" * 100))
    sc.capture()
    sc.wait_replicated()
    master.apply(SetXattr("doc", "user.ntacl", b"B" * 100))  # the same name again: no new alert
    sc.capture()
    sc.wait_replicated()

    def alerts() -> list[Any]:
        return [e for _, e in engine._iter_events((AlertRaised,)) if e.code == "AW0003"]

    assert [(a.severity, a.details) for a in alerts()] == [
        ("warning", {"replica": "r1", "names": ["user.kept"]}),
        ("warning", {"replica": "r1", "names": ["user.ntacl"]}),
    ]
    assert "user.ntacl" in alerts()[1].message
    assert read_xattrs(str(tmp_path / "r1" / "doc")) == {}
    # Told once by the alert, not again as a difference (as for a user's replica),
    # and named in the report and the statistics for as long as it lasts.
    report = sc.difference_report("r1", verify=True)
    assert (report["differences"], report["xattrs_left_out"]) == ({}, ["user.kept", "user.ntacl"])
    assert sc.statistics().replicas["r1"].xattrs_left_out == ["user.kept", "user.ntacl"]
    assert sc.statistics().replicas["r2"].xattrs_left_out == []
    report = sc.difference_report("r2", verify=True)
    assert (report["differences"], report["xattrs_left_out"]) == ({}, [])
    assert read_xattrs(str(tmp_path / "r2" / "doc")) == {
        "user.kept": b"1",
        "user.ntacl": b"B" * 100,
    }


def test_after_a_restart_an_alert_is_neither_repeated_nor_in_the_way(tmp_path: Path) -> None:
    # Was a bug (found while adding AW0003): an engine opened on a journal whose last
    # scenario event was an alert (any: AW0001, AW0002, an applier's error) did not
    # count it, so the next scenario event reused its version and was refused
    # (E4020): no rewind point, start or stop until another process wrote one.
    master_root = tmp_path / "master"
    with temporary_engine(tmp_path) as engine:
        sc, master = _scenario(engine, tmp_path)
        master.apply_all([CreateFile("doc", b"doc"), SetXattr("doc", "user.kept", b"1")])
        sc._appliers["r1"].tree.xattrs_refused.add("user")
        sc.start()
        master.apply(SetXattr("doc", "user.other", b"2"))
        sc.capture()
        sc.wait_replicated()
        alerts = [e for _, e in engine._iter_events((AlertRaised,))]
        assert [a.details["names"] for a in alerts] == [["user.kept"], ["user.other"]]
        (last,) = engine.recorder.select_events(sc._def.id, desc=True, limit=1)
        assert last.topic.endswith(":AlertRaised")  # the scenario's last event
    with temporary_engine(tmp_path) as engine:
        sc = engine.scenario("xa")
        # The journal's alerts name them before anything is refused in this process.
        assert sc.statistics().replicas["r1"].xattrs_left_out == ["user.kept", "user.other"]
        sc._appliers["r1"].tree.xattrs_refused.add("user")
        point = sc.set_rewind_point("after-restart")  # refused before: E4020
        sc.start()
        TreeBuilder(master_root).apply(SetXattr("doc", "user.kept", b"3"))
        sc.capture()
        sc.wait_replicated()
        assert point.position > 0
        names = [e.details["names"] for _, e in engine._iter_events((AlertRaised,))]
        assert names == [["user.kept"], ["user.other"]]  # both alerted before the restart


def test_a_creation_from_before_xattrs_decodes_as_not_recording_them(
    engine: Engine, tmp_path: Path
) -> None:
    # Was a gap (found by review): a master state rebuilt from a journal written
    # before xattrs were recorded took each creation for "made with none", so a
    # set already on the master was never journaled. Such a FileCreated (stored
    # without the field) decodes with xattrs_recorded False, folded as unknown.
    sc, master = _scenario(engine, tmp_path)
    master.apply(CreateFile("a", b"a"))
    sc.start()
    note = next(
        n
        for n in engine.recorder.select_notifications(1, 100)
        if n.topic == "xoengine.events:FileCreated"
    )
    mapper = engine.app.mapper
    assert mapper.to_domain_event(note).xattrs_recorded is True
    state = mapper.transcoder.decode(note.state)
    del state["xattrs_recorded"]
    old = dataclasses.replace(note, state=mapper.transcoder.encode(state))
    assert mapper.to_domain_event(old).xattrs_recorded is False
    with engine.store.read() as txn:  # this journal's creation: known to have none
        assert sc.manifest.get(txn, "a").xattrs == 0  # type: ignore[union-attr]
