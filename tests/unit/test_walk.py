"""xoengine.walk: relpaths, resolve_under, open_parent and the walker, on real temp trees."""

from __future__ import annotations

import errno
import gc
import json
import os
import resource
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from xoengine import walk as walk_module
from xoengine.errors import (
    ConfigurationError,
    EntryUnreadableWarning,
    EntryVanishedWarning,
    InvalidRelPathError,
    ParentNotDirectoryError,
    PathError,
    PathEscapesRootError,
    SymlinkedParentError,
    TreeRootMissingError,
    TreeRootUnreadableError,
    XoError,
)
from xoengine.walk import (
    Entry,
    PathFilter,
    normalize_relpath,
    open_parent,
    resolve_under,
    walk,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NOBODY = 65534


def build(root: Path, spec: dict[str | bytes, Any]) -> None:
    """dict -> dir, bytes -> file content, ("link", target) -> symlink, "fifo" -> fifo."""
    base = os.fsencode(root)
    for name, value in spec.items():
        path = os.path.join(base, os.fsencode(name))
        if isinstance(value, dict):
            os.mkdir(path)
            build(Path(os.fsdecode(path)), value)
        elif isinstance(value, bytes):
            with open(path, "wb") as f:
                f.write(value)
        elif isinstance(value, tuple):
            os.symlink(value[1], path)
        elif value == "fifo":
            os.mkfifo(path)
        else:
            raise AssertionError(value)


def listing(root: Path | bytes | str, **kwargs: Any) -> list[tuple[str, str]]:
    return [(e.relpath, e.kind) for e in walk(root, **kwargs)]


def paths(root: Path, **kwargs: Any) -> list[str]:
    return [e.relpath for e in walk(root, **kwargs)]


_LISTDIR = os.listdir  # tests patch os.listdir; counting fds must not go through the patch


def open_fds() -> int:
    return len(_LISTDIR("/proc/self/fd"))


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """A fresh temp dir that an unprivileged user can reach.

    Not pytest's ``tmp_path``: it is 0700 root (the permission tests walk as
    nobody), and pytest 9's tmp_path cleanup leaks a scandir iterator whose
    ResourceWarning fails the whole run under ``filterwarnings = error``.
    """
    path = Path(tempfile.mkdtemp(prefix="xo-walk-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


# -- normalize_relpath ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a/b", "a/b"),
        ("./a//b/", "a/b"),
        ("a/./b/.", "a/b"),
        (b"a/b", "a/b"),
        (b"caf\xe9", "caf\udce9"),
        ("caf\udce9", "caf\udce9"),
        (b"caf\xc3\xa9", "café"),
        ("\udcc3\udca9", "é"),  # escaped UTF-8 bytes decode to the canonical character
        ("a\\..\\b", "a\\..\\b"),  # backslash is an ordinary byte on POSIX
        ("...", "..."),
        ("a/..b/c..", "a/..b/c.."),
        (" a /b ", " a /b "),
        ("a\nb", "a\nb"),
    ],
)
def test_normalize_relpath_canonical_forms(given: str | bytes, expected: str) -> None:
    assert normalize_relpath(given) == expected
    assert normalize_relpath(expected) == expected


@pytest.mark.parametrize(
    "hostile",
    ["../x", "/etc/passwd", "a/../../b", "a/..", "..", "./..", "//x", b"/x", b"../x", "a/b/../c"],
)
def test_normalize_relpath_refuses_escapes(hostile: str | bytes) -> None:
    with pytest.raises(PathEscapesRootError) as info:
        normalize_relpath(hostile)
    assert info.value.code == "E2001"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", ["", ".", "./", "a\x00b", b"a\x00b", "\x00", "\ud800", "\udc41"])
def test_normalize_relpath_refuses_invalid_names(bad: str | bytes) -> None:
    with pytest.raises(InvalidRelPathError) as info:
        normalize_relpath(bad)
    assert info.value.code == "E2002"


@pytest.mark.parametrize("bad", [None, 5, Path("a"), bytearray(b"a")])
def test_normalize_relpath_refuses_non_strings(bad: Any) -> None:
    with pytest.raises(InvalidRelPathError):
        normalize_relpath(bad)


def test_path_error_message_is_printable_for_undecodable_names() -> None:
    with pytest.raises(PathError) as info:
        normalize_relpath(b"../caf\xe9")
    described = info.value.describe()
    assert described["code"] == "E2001"
    assert "caf" in info.value.message
    info.value.message.encode("utf-8")  # repr escaped the raw byte: safe to print or log
    json.dumps(described)


# -- resolve_under -------------------------------------------------------------------


def test_resolve_under_joins_str_and_bytes_roots(tmp_dir: Path) -> None:
    assert resolve_under(str(tmp_dir), "a/b") == f"{tmp_dir}/a/b"
    assert resolve_under(str(tmp_dir) + "/", b"a//b") == f"{tmp_dir}/a/b"
    assert resolve_under(os.fsencode(tmp_dir), "caf\udce9") == os.fsencode(tmp_dir) + b"/caf\xe9"
    assert resolve_under(tmp_dir, "x") == f"{tmp_dir}/x"


def test_resolve_under_makes_a_relative_root_absolute(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_dir / "r").mkdir()
    monkeypatch.chdir(tmp_dir)
    assert resolve_under("r", "x") == f"{tmp_dir}/r/x"
    assert resolve_under(b"r", "x") == os.fsencode(tmp_dir) + b"/r/x"


@pytest.mark.parametrize("hostile", ["../x", "/etc/passwd", "a/../../b", "a\x00b", ""])
def test_resolve_under_refuses_hostile_relpaths(tmp_dir: Path, hostile: str) -> None:
    with pytest.raises(PathError):
        resolve_under(tmp_dir, hostile)


def test_resolve_under_refuses_symlinked_parent(tmp_dir: Path) -> None:
    outside = tmp_dir / "outside"
    root = tmp_dir / "root"
    build(tmp_dir, {"outside": {}, "root": {"a": {}, "out": ("link", str(outside))}})
    with pytest.raises(SymlinkedParentError) as info:
        resolve_under(root, "out/passwd")
    assert info.value.code == "E2003"
    assert info.value.fields["parent"] == "out"
    (root / "a" / "in").symlink_to(root / "a")  # a link that stays inside is refused too
    with pytest.raises(SymlinkedParentError) as info:
        resolve_under(root, "a/in/deeper/x")
    assert info.value.fields["parent"] == "a/in"


def test_resolve_under_allows_a_symlink_as_the_leaf(tmp_dir: Path) -> None:
    build(tmp_dir, {"d": {"leaf": ("link", "/etc/passwd")}})
    assert resolve_under(tmp_dir, "d/leaf") == f"{tmp_dir}/d/leaf"


def test_resolve_under_refuses_a_file_as_parent(tmp_dir: Path) -> None:
    build(tmp_dir, {"f": b"data"})
    with pytest.raises(ParentNotDirectoryError) as info:
        resolve_under(tmp_dir, "f/x")
    assert info.value.code == "E2004"


def test_resolve_under_accepts_missing_parents(tmp_dir: Path) -> None:
    assert resolve_under(tmp_dir, "no/such/dir/x") == f"{tmp_dir}/no/such/dir/x"


def test_resolve_under_follows_the_root_itself(tmp_dir: Path) -> None:
    build(tmp_dir, {"real": {"d": {}}, "alias": ("link", "real")})
    assert resolve_under(tmp_dir / "alias", "d/x") == f"{tmp_dir}/alias/d/x"


# -- open_parent ----------------------------------------------------------------------


def test_open_parent_creates_parents_and_writes_under_root(tmp_dir: Path) -> None:
    before = open_fds()
    with open_parent(tmp_dir, b"a/caf\xe9/f.bin", create=True) as (dir_fd, name):
        assert name == "f.bin"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644, dir_fd=dir_fd)
        os.write(fd, b"payload")
        os.close(fd)
    with open(os.fsencode(tmp_dir) + b"/a/caf\xe9/f.bin", "rb") as f:
        assert f.read() == b"payload"
    with pytest.raises(OSError):
        os.fstat(dir_fd)
    assert open_fds() == before


def test_open_parent_top_level_name_yields_the_root(tmp_dir: Path) -> None:
    with open_parent(tmp_dir, "top") as (dir_fd, name):
        assert name == "top"
        assert os.fstat(dir_fd).st_ino == tmp_dir.stat().st_ino


def test_open_parent_without_create_reports_a_missing_parent(tmp_dir: Path) -> None:
    with pytest.raises(FileNotFoundError), open_parent(tmp_dir, "no/x"):
        pass


@pytest.mark.parametrize("create", [False, True])
def test_open_parent_refuses_symlinked_parent(tmp_dir: Path, create: bool) -> None:
    build(tmp_dir, {"outside": {}, "root": {"out": ("link", "../outside")}})
    with (
        pytest.raises(SymlinkedParentError),
        open_parent(tmp_dir / "root", "out/sub/x", create=create),
    ):
        pass
    assert list((tmp_dir / "outside").iterdir()) == []


def test_open_parent_refuses_a_file_as_parent(tmp_dir: Path) -> None:
    build(tmp_dir, {"f": b""})
    with pytest.raises(ParentNotDirectoryError), open_parent(tmp_dir, "f/x", create=True):
        pass


def test_open_parent_refuses_a_symlink_swapped_in_after_mkdir(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race a replica writer must survive: its mkdir succeeds, then someone
    # replaces the new directory by a symlink to outside before it is opened.
    outside = tmp_dir / "outside"
    outside.mkdir()
    root = tmp_dir / "root"
    root.mkdir()
    real_mkdir = os.mkdir

    def mkdir_then_swap(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        os.rmdir(path, dir_fd=dir_fd)
        os.symlink(str(outside), path, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir_then_swap)
    with pytest.raises(SymlinkedParentError), open_parent(root, "new/x", create=True):
        pass
    assert list(outside.iterdir()) == []


def test_open_parent_reports_a_missing_root(tmp_dir: Path) -> None:
    with pytest.raises(TreeRootMissingError), open_parent(tmp_dir / "nope", "x"):
        pass


# -- walk: what it reports ------------------------------------------------------------


def test_walk_orders_depth_first_by_name_bytes(tmp_dir: Path) -> None:
    build(
        tmp_dir,
        {
            "b": b"",
            "a": {"z": b"", "y": {"x": b"1"}},
            "a-b": b"",
            "B": {},
            "\uff01": b"",
            b"\xf0": b"",
        },
    )
    # "\uff01" is b"\xef\xbc\x81": before b"\xf0" in bytes, after "\udcf0" as str.
    assert listing(tmp_dir) == [
        ("B", "dir"),
        ("a", "dir"),
        ("a/y", "dir"),
        ("a/y/x", "file"),
        ("a/z", "file"),
        ("a-b", "file"),
        ("b", "file"),
        ("\uff01", "file"),
        ("\udcf0", "file"),
    ]


def test_walk_entry_carries_lstat_fields(tmp_dir: Path) -> None:
    build(tmp_dir, {"f": b"12345", "d": {}})
    os.chmod(tmp_dir / "f", 0o4751)
    os.link(tmp_dir / "f", tmp_dir / "hard")
    entries = {e.relpath: e for e in walk(tmp_dir)}
    st = os.lstat(tmp_dir / "f")
    f = entries["f"]
    assert (f.kind, f.size, f.mode) == ("file", 5, 0o4751)
    assert (f.mtime_ns, f.ctime_ns, f.inode, f.dev) == (
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
    )
    assert (f.nlink, f.uid, f.gid, f.target) == (2, st.st_uid, st.st_gid, None)
    assert entries["hard"].inode == f.inode
    assert entries["d"].kind == "dir"
    with pytest.raises(AttributeError):  # immutable
        f.size = 0  # type: ignore[misc]


def test_walk_reports_symlinks_without_following_them(tmp_dir: Path) -> None:
    outside = tmp_dir / "outside"
    build(tmp_dir, {"outside": {"secret": b"s"}})
    root = tmp_dir / "root"
    build(
        tmp_dir,
        {
            "root": {
                "d": {"f": b"x"},
                "to_file": ("link", "d/f"),
                "to_dir": ("link", "d"),
                "to_outside": ("link", str(outside)),
                "dangling": ("link", "no/such"),
                "up": ("link", ".."),
            }
        },
    )
    entries = {e.relpath: e for e in walk(root)}
    assert sorted(entries) == ["d", "d/f", "dangling", "to_dir", "to_file", "to_outside", "up"]
    assert {k: e.target for k, e in entries.items() if e.kind == "symlink"} == {
        "to_file": "d/f",
        "to_dir": "d",
        "to_outside": str(outside),
        "dangling": "no/such",
        "up": "..",
    }
    assert entries["to_file"].size == len("d/f")


def test_walk_survives_symlink_loops(tmp_dir: Path) -> None:
    build(
        tmp_dir,
        {
            "a": ("link", "b"),
            "b": ("link", "a"),
            "self": ("link", "self"),
            "d": {"back": ("link", "..")},
        },
    )
    w = walk(tmp_dir)
    assert [(e.relpath, e.kind) for e in w] == [
        ("a", "symlink"),
        ("b", "symlink"),
        ("d", "dir"),
        ("d/back", "symlink"),
        ("self", "symlink"),
    ]
    assert w.warnings == []


def test_walk_handles_non_utf8_names_end_to_end(tmp_dir: Path) -> None:
    base = os.fsencode(tmp_dir)
    os.mkdir(base + b"/caf\xe9")
    with open(base + b"/caf\xe9/\xff\xfe.bin", "wb") as f:
        f.write(b"raw")
    os.symlink(b"caf\xe9/\xff\xfe.bin", base + b"/l\xe9")
    entries = list(walk(base))
    assert [os.fsencode(e.relpath) for e in entries] == [
        b"caf\xe9",
        b"caf\xe9/\xff\xfe.bin",
        b"l\xe9",
    ]
    link = entries[2]
    assert os.fsencode(link.target or "") == b"caf\xe9/\xff\xfe.bin"
    # The relpath goes back to the same file, through both path helpers.
    with open(resolve_under(base, entries[1].relpath), "rb") as f:
        assert f.read() == b"raw"
    with open_parent(tmp_dir, entries[1].relpath) as (dir_fd, name):
        assert os.stat(name, dir_fd=dir_fd).st_size == 3
    assert normalize_relpath(os.fsencode(entries[1].relpath)) == entries[1].relpath
    assert listing(str(tmp_dir)) == listing(base)


def test_walk_reports_fifos_sockets_and_devices_as_special(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_dir, {"fifo": "fifo", "f": b""})
    monkeypatch.chdir(tmp_dir)  # AF_UNIX paths are short: bind relative to the tree
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock")
    expected = [("f", "file"), ("fifo", "special"), ("sock", "special")]
    try:
        os.mknod(tmp_dir / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        expected.insert(2, ("null", "special"))
    except PermissionError:
        pass  # not allowed to make devices here: the fifo and socket still cover "special"
    try:
        assert listing(tmp_dir) == expected  # and the walk did not block opening the fifo
        assert listing(tmp_dir, include=["f"]) == [("f", "file")]
    finally:
        sock.close()


def test_walk_of_an_empty_root_is_empty_without_warnings(tmp_dir: Path) -> None:
    w = walk(tmp_dir)
    assert list(w) == []
    assert (w.warnings, w.unlisted) == ([], [])


def test_walk_follows_no_link_on_its_roots_way(tmp_dir: Path) -> None:
    """Roots are resolved where they are configured (a scenario's, a replay's target):
    a link on the way now is one swapped in since, and never followed (review 27 R)."""
    build(tmp_dir, {"real": {"d": {"f": b""}}, "alias": ("link", "real")})
    assert listing(tmp_dir / "real" / "d") == [("f", "file")]
    for through in (tmp_dir / "alias", tmp_dir / "alias" / "d"):
        with pytest.raises(TreeRootMissingError, match="symbolic link"):
            walk(through)


@pytest.mark.parametrize("make", ["missing", "file", "dangling"])
def test_walk_refuses_a_root_that_is_not_a_directory(tmp_dir: Path, make: str) -> None:
    root = tmp_dir / "root"
    if make == "file":
        root.write_bytes(b"")
    elif make == "dangling":
        root.symlink_to(tmp_dir / "nowhere")
    with pytest.raises(TreeRootMissingError) as info:
        walk(root)
    assert info.value.code == "E2005"
    assert isinstance(info.value, XoError)


def test_walk_refuses_an_unlistable_root_instead_of_reporting_it_empty(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fds_before = open_fds()

    def denied(path: Any) -> list[str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(TreeRootUnreadableError) as info:
        walk(tmp_dir)
    assert info.value.code == "E2006"
    assert open_fds() == fds_before


def _chain(root: Path, depth: int) -> None:
    """Make root/d/d/.../d, ``depth`` levels, through dir fds."""
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)


def _unchain(root: Path, depth: int) -> None:
    for level in range(depth, 0, -1):  # shutil.rmtree recurses per level: too deep for it
        os.rmdir(root.joinpath(*["d"] * level))


def test_walk_goes_deep_without_recursion(tmp_dir: Path) -> None:
    depth = 1200  # deeper than the interpreter's recursion limit
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = depth + 200  # the walk holds one fd per level
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    _chain(tmp_dir, depth)
    try:
        if soft != resource.RLIM_INFINITY and soft < needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        w = walk(tmp_dir)
        entries = list(w)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        _unchain(tmp_dir, depth)
    assert len(entries) == depth
    assert entries[-1].relpath == "/".join(["d"] * depth)
    assert w.warnings == []


def test_walk_out_of_fds_marks_the_directory_unlisted(tmp_dir: Path) -> None:
    depth = 12
    _chain(tmp_dir, depth)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 4, hard))
        w = walk(tmp_dir)
        entries = list(w)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        _unchain(tmp_dir, depth)
    assert 0 < len(entries) < depth
    assert w.unlisted == [entries[-1].relpath]  # its contents are unknown, not empty
    [warning] = w.warnings
    assert (warning.code, warning.fields["errno"]) == ("W2002", errno.EMFILE)


# -- walk: lifecycle ------------------------------------------------------------------


def test_walk_releases_fds_when_done_closed_or_dropped(tmp_dir: Path) -> None:
    build(tmp_dir, {"a": {"b": {"c": {"f": b""}}}})
    before = open_fds()
    list(walk(tmp_dir))
    assert open_fds() == before
    with walk(tmp_dir) as w:
        assert next(w).relpath == "a"
        assert next(w).relpath == "a/b"
        assert open_fds() == before + 3
    assert open_fds() == before
    assert list(w) == []  # closed: the walk has ended
    w = walk(tmp_dir)
    next(w)
    del w
    gc.collect()
    assert open_fds() == before


def test_walk_is_a_one_pass_iterator(tmp_dir: Path) -> None:
    build(tmp_dir, {"a": b"", "b": b""})
    w = walk(tmp_dir)
    assert iter(w) is w
    assert [e.relpath for e in w] == ["a", "b"]
    assert list(w) == []


def test_entry_name_is_the_last_part() -> None:
    e = Entry("a/b/c\udce9", "file", 0, 0o644, 0, 0, 1, 1, 1, 0, 0)
    assert e.name == "c\udce9"
    assert e._replace(relpath="top").name == "top"


# -- walk: a tree that changes or cannot be read ------------------------------------


def test_walk_skips_a_file_that_vanishes_with_a_warning(tmp_dir: Path) -> None:
    build(tmp_dir, {"a": b"", "b": b"", "c": b""})
    w = walk(tmp_dir)
    assert next(w).relpath == "a"
    (tmp_dir / "b").unlink()
    assert [e.relpath for e in w] == ["c"]
    assert len(w.warnings) == 1
    warning = w.warnings[0]
    assert isinstance(warning, EntryVanishedWarning)
    assert (warning.code, warning.fields["path"]) == ("W2001", "b")
    assert w.unlisted == []


def test_walk_skips_a_directory_that_vanishes_with_a_warning(tmp_dir: Path) -> None:
    build(tmp_dir, {"a": b"", "d": {"x": b"", "y": {"z": b""}}, "e": {"f": b""}})
    w = walk(tmp_dir)
    assert next(w).relpath == "a"
    shutil.rmtree(tmp_dir / "d")
    assert [e.relpath for e in w] == ["e", "e/f"]
    assert [(type(x), x.fields["path"]) for x in w.warnings] == [(EntryVanishedWarning, "d")]


def test_walk_skips_contents_removed_after_their_directory_was_listed(tmp_dir: Path) -> None:
    build(tmp_dir, {"d": {"x": b"", "y": {"z": b""}}, "e": b""})
    w = walk(tmp_dir)
    assert next(w).relpath == "d"
    shutil.rmtree(tmp_dir / "d")
    assert [e.relpath for e in w] == ["e"]
    assert sorted(x.fields["path"] for x in w.warnings) == ["d/x", "d/y"]
    assert all(x.code == "W2001" for x in w.warnings)


def _swap_on_open(
    monkeypatch: pytest.MonkeyPatch, victim: str, swap: Callable[[int], None]
) -> None:
    """Run ``swap(dir_fd)`` just before the walker opens ``victim``: the stat-to-open race."""
    real_open = os.open

    fired: list[bool] = []

    def racing_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == victim and dir_fd is not None and not fired:
            fired.append(True)
            swap(dir_fd)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", racing_open)


def test_walk_does_not_follow_a_directory_swapped_for_a_symlink(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_dir, {"outside": {"secret": b"s"}, "root": {"d": {"x": b""}, "e": b""}})

    def swap(dir_fd: int) -> None:
        os.rename("d", "d.old", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.symlink(str(tmp_dir / "outside"), "d", dir_fd=dir_fd)

    _swap_on_open(monkeypatch, "d", swap)
    w = walk(tmp_dir / "root")
    found = [e.relpath for e in w]
    assert "d/secret" not in found
    assert found == ["e"]
    assert [(x.code, x.fields["path"]) for x in w.warnings] == [("W2001", "d")]


def test_walk_does_not_descend_a_directory_replaced_by_another(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(tmp_dir, {"d": {"x": b""}, "other": {"y": b""}})

    def swap(dir_fd: int) -> None:
        os.rename("d", "d.old", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.rename("other", "d", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    _swap_on_open(monkeypatch, "d", swap)
    w = walk(tmp_dir)
    assert [e.relpath for e in w] == []  # "other" was listed, but it is gone now
    assert sorted(x.fields["path"] for x in w.warnings) == ["d", "other"]
    assert "replaced" in w.warnings[0].message


def test_walk_reports_an_unlistable_directory_as_unlisted_not_empty(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root can read any directory, so refuse the listing of "locked" by inode.
    build(tmp_dir, {"a": b"", "locked": {"inside": b""}, "z": {"f": b""}})
    locked_ino = (tmp_dir / "locked").stat().st_ino
    real_listdir = os.listdir

    def listdir(path: Any) -> list[str]:
        if isinstance(path, int) and os.fstat(path).st_ino == locked_ino:
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    before = open_fds()
    w = walk(tmp_dir)
    assert [(e.relpath, e.kind) for e in w] == [
        ("a", "file"),
        ("locked", "dir"),
        ("z", "dir"),
        ("z/f", "file"),
    ]
    assert w.unlisted == ["locked"]
    [warning] = w.warnings
    assert isinstance(warning, EntryUnreadableWarning)
    assert (warning.code, warning.fields["path"], warning.fields["errno"]) == (
        "W2002",
        "locked",
        13,
    )
    assert open_fds() == before


def _walk_as_unprivileged(root: Path) -> dict[str, Any]:
    """Walk ``root`` as an unprivileged user: in-process, or in a forked child set to nobody."""

    def run() -> dict[str, Any]:
        try:
            w = walk(root)
        except XoError as e:
            return {"error": e.code}
        found = [e.relpath for e in w]
        return {
            "found": found,
            "warnings": [(x.code, x.fields["path"]) for x in w.warnings],
            "unlisted": w.unlisted,
        }

    if os.geteuid() != 0:
        return run()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, report through the pipe, never return to pytest
        status = 1
        try:
            os.close(read_end)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write_end, json.dumps(run()).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return json.loads(data)  # type: ignore[no-any-return]


def test_walk_warns_on_a_permission_denied_directory(tmp_dir: Path) -> None:
    build(
        tmp_dir,
        {"a": b"", "locked": {"inside": b""}, "noexec": {"f": b""}, "z": {"f": b""}},
    )
    (tmp_dir / "locked").chmod(0)
    (tmp_dir / "noexec").chmod(0o644)  # listable, but its entries cannot be stat'ed
    try:
        result = _walk_as_unprivileged(tmp_dir)
    finally:
        (tmp_dir / "locked").chmod(0o755)
        (tmp_dir / "noexec").chmod(0o755)
    assert result == {
        "found": ["a", "locked", "noexec", "z", "z/f"],
        "warnings": [["W2002", "locked"], ["W2002", "noexec/f"]],
        "unlisted": ["locked"],
    }


def test_walk_refuses_a_permission_denied_root(tmp_dir: Path) -> None:
    root = tmp_dir / "root"
    root.mkdir()
    root.chmod(0)
    try:
        result = _walk_as_unprivileged(root)
    finally:
        root.chmod(0o755)
    assert result == {"error": "E2006"}


# -- include / exclude -----------------------------------------------------------------


TREE: dict[str | bytes, Any] = {
    "a.tmp": b"",
    "keep.txt": b"",
    "cache": b"",  # a file named like an excluded directory
    "build": {"out": b""},
    "sub": {"build": {"keep": b""}, "cache": {"y.bin": b""}, "x.tmp": b""},
    "node_modules": {"m.js": b""},
    "deep": {"er": {"node_modules": {"n.js": b""}}},
    "src": {"x.py": b"", "y.c": b"", "cache": {"z.py": b""}},
    "logs": {"x.gz": b"", "x.log": b"", "old": {"y.gz": b""}},
}
ALL = {
    "a.tmp",
    "keep.txt",
    "cache",
    "build",
    "build/out",
    "sub",
    "sub/build",
    "sub/build/keep",
    "sub/cache",
    "sub/cache/y.bin",
    "sub/x.tmp",
    "node_modules",
    "node_modules/m.js",
    "deep",
    "deep/er",
    "deep/er/node_modules",
    "deep/er/node_modules/n.js",
    "src",
    "src/x.py",
    "src/y.c",
    "src/cache",
    "src/cache/z.py",
    "logs",
    "logs/x.gz",
    "logs/x.log",
    "logs/old",
    "logs/old/y.gz",
}
DIRS = {p for p in ALL if p in {"build", "sub", "node_modules", "deep", "src", "logs"}} | {
    "sub/build",
    "sub/cache",
    "deep/er",
    "deep/er/node_modules",
    "src/cache",
    "logs/old",
}


@pytest.fixture
def tree(tmp_dir: Path) -> Path:
    build(tmp_dir, TREE)
    return tmp_dir


def under(*tops: str) -> set[str]:
    return {p for p in ALL if any(p == t or p.startswith(t + "/") for t in tops)}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ALL),
        ({"exclude": ["*.tmp"]}, ALL - {"a.tmp", "sub/x.tmp"}),
        ({"exclude": ["cache/"]}, ALL - under("sub/cache", "src/cache")),
        ({"exclude": ["cache"]}, ALL - under("cache", "sub/cache", "src/cache")),
        ({"exclude": ["**/node_modules"]}, ALL - under("node_modules", "deep/er/node_modules")),
        ({"exclude": ["node_modules/"]}, ALL - under("node_modules", "deep/er/node_modules")),
        ({"exclude": ["/build"]}, ALL - under("build")),
        ({"exclude": ["build/"]}, ALL - under("build", "sub/build")),
        ({"exclude": ["logs/*.gz"]}, ALL - {"logs/x.gz", "logs/old/y.gz"}),  # * crosses "/"
        ({"exclude": ["**/cache/*.py"]}, ALL - {"src/cache/z.py"}),
        ({"exclude": ["sub/*"]}, ALL - under("sub/build", "sub/cache", "sub/x.tmp")),
        ({"exclude": [b"*.tmp", "/logs/"]}, ALL - {"a.tmp", "sub/x.tmp"} - under("logs")),
        ({"include": ["*.py"]}, DIRS | {"src/x.py", "src/cache/z.py"}),
        ({"include": ["src/"]}, DIRS | under("src")),
        ({"include": ["/src"]}, DIRS | under("src")),
        (
            {"include": ["*.py"], "exclude": ["cache/"]},
            DIRS - under("sub/cache", "src/cache") | {"src/x.py"},
        ),
        ({"include": ["*.py"], "exclude": ["x.py"]}, DIRS | {"src/cache/z.py"}),
        ({"include": ["nothing-matches"]}, DIRS),
    ],
)
def test_walk_applies_include_and_exclude_rules(
    tree: Path, kwargs: dict[str, Any], expected: set[str]
) -> None:
    found = paths(tree, **kwargs)
    assert set(found) == expected
    assert len(found) == len(set(found))
    f = PathFilter(kwargs.get("include", ()), kwargs.get("exclude", ()))
    assert {p for p in ALL if f.selects(p, is_dir=p in DIRS)} == expected


def test_walk_does_not_descend_an_excluded_directory(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = os.open

    def spying_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        opened.append(os.fsdecode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", spying_open)
    list(walk(tree, exclude=["node_modules", "/src"]))
    assert "node_modules" not in opened
    assert "src" not in opened
    assert "deep" in opened


def test_walk_matches_non_utf8_patterns(tmp_dir: Path) -> None:
    base = os.fsencode(tmp_dir)
    for name in (b"caf\xe9.tmp", b"ok", b"\xff"):
        with open(base + b"/" + name, "wb"):
            pass
    assert paths(tmp_dir, exclude=[b"*\xe9.tmp"]) == ["ok", "\udcff"]
    assert paths(tmp_dir, include=["\udcff"]) == ["\udcff"]


def test_walk_patterns_are_case_sensitive(tmp_dir: Path) -> None:
    build(tmp_dir, {"A.TMP": b"", "a.tmp": b""})
    assert paths(tmp_dir, exclude=["*.tmp"]) == ["A.TMP"]


@pytest.mark.parametrize("bad", ["", "/", "//", "a\x00b"])
def test_walk_refuses_patterns_that_match_nothing(tmp_dir: Path, bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        walk(tmp_dir, exclude=[bad])
    assert info.value.code == "E1001"


def test_path_filter_selects_follows_ancestors(tmp_dir: Path) -> None:
    f = PathFilter(include=["src/"], exclude=["cache/"])
    assert f.selects("src/a/b.c", is_dir=False)
    assert not f.selects("other/b.c", is_dir=False)
    assert f.selects("other", is_dir=True)
    assert not f.selects("src/cache/x", is_dir=False)
    assert not f.selects("src/cache", is_dir=True)
    assert f.selects(b"src/cache", is_dir=False)  # a *file* named cache
    with pytest.raises(PathEscapesRootError):
        f.selects("../src/x", is_dir=False)


def test_walk_module_imports_only_errors_and_the_stdlib() -> None:
    source = Path(walk_module.__file__).read_text()
    imports = {
        line.split()[1]
        for line in source.splitlines()
        if line.startswith(("import ", "from ")) and "__future__" not in line
    }
    assert {m for m in imports if m.startswith("xoengine")} == {"xoengine.errors"}
    assert "Room: algorithms/storage" in source


def test_parent_cache_keeps_a_bounded_number_of_directories_open(tmp_path: Path) -> None:
    # A replay or sync of a tree with more directories than the process may open
    # files must not fail with EMFILE: the least recently used fds are closed.
    from xoengine.walk import ParentCache  # noqa: PLC0415

    for i in range(40):
        (tmp_path / f"d{i:02d}" / "sub").mkdir(parents=True)
    cache = ParentCache(str(tmp_path), limit=8)
    try:
        held: list[int] = []
        for i in range(40):
            fd, leaf = cache.parent(f"d{i:02d}/sub/file", create=False)
            assert leaf == "file"
            assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / f"d{i:02d}" / "sub"))
            assert len(cache._fds) <= 8
            held.append(fd)
        # The two most recent parents (an operation holding two) are still open.
        first, _ = cache.parent("d38/sub/x", create=False)
        second, _ = cache.parent("d39/sub/x", create=False)
        assert os.path.samestat(os.fstat(first), os.stat(tmp_path / "d38" / "sub"))
        assert os.path.samestat(os.fstat(second), os.stat(tmp_path / "d39" / "sub"))
    finally:
        cache.close()
    assert not cache._fds
