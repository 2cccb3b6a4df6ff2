"""LMDB's meta pages and table roots, read without LMDB: the open-time damage check.

Room: floor. Imports nothing of xoengine (and never ``lmdb``: it reads the
data file with ``os.pread``).

LMDB trusts the meta page with the higher transaction id and the root page
numbers it finds there. A flipped bit in either makes it open an older
snapshot or lose whole tables without an error. :func:`meta_problem` reads
the two meta pages and the roots they point to, as LMDB 0.9 lays them out
(64-bit), and says what is wrong; ``datastore.Store`` refuses to open such a
file with a coded error. The rules are listed on ``Store._check_meta``.
:func:`size_problem` is asked first, before LMDB maps the file: LMDB checks
no length, and reads a meta page cut short through its map (SIGBUS).
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["meta_problem", "size_problem"]

# LMDB 0.9 on-disk layout (64-bit).
_PAGE_HEAD = struct.Struct("=QHHHH")  # pgno, pad, flags, lower, upper
_META_HEAD = struct.Struct("=IIQQ")  # magic, version, address, map size
_META_DB = struct.Struct("=IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow, entries, root
_META_TAIL = struct.Struct("=QQ")  # last page, transaction id
_NODE_HEAD = struct.Struct("=HHHH")  # data size low, high, flags, key size
_MDB_MAGIC = 0xBEEFC0DE
_P_INVALID = 2**64 - 1
_P_BRANCH, _P_LEAF, _P_KINDS = 0x01, 0x02, 0x0F
_F_BIGDATA, _F_SUBDATA = 0x01, 0x02
_MAX_DEPTH = 64
_FREE_LIST_PAGES = 4096  # read at most this many pages of the free list at open
_PSIZE = struct.Struct("=I")  # the free table's pad in the first meta page: LMDB's page size


class _DamagedError(Exception):
    """Structural damage found by the open-time check; the message says what."""


def size_problem(fd: int) -> str | None:
    """What is wrong with the length of the data file ``fd``, or None.

    An empty file is a new journal (LMDB writes its meta pages). Any other
    holds LMDB's two meta pages whole, of the page size the first one names
    (the system's where it names none).
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    psize = mmap.PAGESIZE
    head = os.pread(fd, _PAGE_HEAD.size + _META_HEAD.size + _PSIZE.size, 0)
    if len(head) == _PAGE_HEAD.size + _META_HEAD.size + _PSIZE.size:
        magic, _, _, _ = _META_HEAD.unpack_from(head, _PAGE_HEAD.size)
        (named,) = _PSIZE.unpack_from(head, _PAGE_HEAD.size + _META_HEAD.size)
        if magic == _MDB_MAGIC and named >= psize:  # LMDB's pages are no smaller than the system's
            psize = named
    if size < 2 * psize:
        return f"the data file is cut short: {size} bytes, less than two {psize}-byte meta pages"
    return None


def meta_problem(fd: int, metas: bytes, psize: int) -> str | None:
    """What is wrong with the meta pages ``metas`` of the data file ``fd``, or None."""
    try:
        newer = _newer_meta(metas, psize)
        if newer is not None:
            _check_length(fd, psize, newer[0])
            _check_roots(fd, psize, *newer)
    except _DamagedError as e:
        return str(e)
    return None


def _newer_meta(metas: bytes, psize: int) -> tuple[int, list[tuple[int, ...]]] | None:
    """(last page, [free table, main table]) of the meta page LMDB will use."""
    if len(metas) < 2 * psize:
        # LMDB would read the meta page cut short through its map (SIGBUS).
        raise _DamagedError(f"the data file is cut short: {len(metas)} bytes, not two meta pages")
    parsed = []
    for index in (0, 1):
        at = index * psize + _PAGE_HEAD.size
        magic, version, _, _ = _META_HEAD.unpack_from(metas, at)
        if magic != _MDB_MAGIC or version != 1:
            return None  # not a format checked here (LMDB refuses a bad magic itself)
        at += _META_HEAD.size
        dbs = [_META_DB.unpack_from(metas, at + k * _META_DB.size) for k in (0, 1)]
        last_page, txnid = _META_TAIL.unpack_from(metas, at + 2 * _META_DB.size)
        parsed.append((txnid, last_page, dbs))
    (t0, _, _), (t1, _, _) = parsed
    # LMDB writes transaction t into meta page t % 2, so the two are consecutive
    # (a new file has both at 0).
    if not t0 == t1 == 0 and (abs(t0 - t1) != 1 or t0 % 2 or not t1 % 2):
        raise _DamagedError(f"transaction ids {t0} and {t1} are not consecutive in pages 0 and 1")
    newer, older = (parsed[1], parsed[0]) if t1 > t0 else (parsed[0], parsed[1])
    if newer[1] < older[1]:
        # The file only ever grows: a newer commit never uses fewer pages.
        raise _DamagedError(
            f"the newer meta page (transaction {newer[0]}) uses fewer pages than the older"
        )
    return newer[1], newer[2]


def _check_length(fd: int, psize: int, last_page: int) -> None:
    """Refuse a data file without every page the newest commit uses.

    LMDB would read the missing ones through its map, past the file's end: SIGBUS.
    """
    size = os.fstat(fd).st_size
    if size < (last_page + 1) * psize:
        raise _DamagedError(
            f"the data file is cut short: {size} bytes, where the newest commit "
            f"uses {last_page + 1} pages of {psize}"
        )


def _check_roots(fd: int, psize: int, last_page: int, dbs: list[tuple[int, ...]]) -> None:
    """Check the roots of the free and main tables and, if it is one page, of every table."""
    free_db, main_db = dbs
    if main_db[1]:
        raise _DamagedError(f"the main table has flags {main_db[1]:#x}")
    roots = {"free table": free_db, "main table": main_db}
    for name, record in roots.items():
        _check_root(fd, psize, last_page, name, record)
    if main_db[2] == 1:
        for name, record in _table_records(os.pread(fd, psize, main_db[7] * psize), main_db[6]):
            _check_root(fd, psize, last_page, name, record)
            roots[name] = record
    # A root that the newest commit lists as free is an older copy of that page.
    free = set() if free_db[7] == _P_INVALID else _free_pages(fd, psize, free_db[7], last_page)
    for name, record in roots.items():
        if record[7] in free:
            raise _DamagedError(f"the root page {record[7]} of the {name} is a free page")


def _table_records(page: bytes, entries: int) -> Iterator[tuple[str, tuple[int, ...]]]:
    """(name, MDB_db record) of each table on the main table's only page."""
    count = (_PAGE_HEAD.unpack_from(page)[3] - _PAGE_HEAD.size) // 2
    if count != entries:
        raise _DamagedError(f"the main table counts {entries} tables but its page holds {count}")
    for i in range(count):
        (offset,) = struct.unpack_from("=H", page, _PAGE_HEAD.size + 2 * i)
        if not _PAGE_HEAD.size <= offset <= len(page) - _NODE_HEAD.size:
            raise _DamagedError(f"record {i} of the main table is outside its page")
        low, high, node_flags, key_size = _NODE_HEAD.unpack_from(page, offset)
        at = offset + _NODE_HEAD.size + key_size
        size = low | high << 16
        if node_flags != _F_SUBDATA or size != _META_DB.size or at + size > len(page):
            raise _DamagedError(f"record {i} of the main table is not a table")
        name = page[offset + _NODE_HEAD.size : at].decode(errors="replace")
        yield f"table {name!r}", _META_DB.unpack_from(page, at)


def _check_root(fd: int, psize: int, last_page: int, name: str, record: tuple[int, ...]) -> None:
    """Check the root of the table described by ``record`` (an MDB_db)."""
    _, _, depth, _, _, _, entries, root = record
    if root == _P_INVALID:
        if depth or entries:
            raise _DamagedError(f"the {name} has no root but depth {depth}, {entries} entries")
        return
    if not 1 <= depth <= _MAX_DEPTH or root > last_page:
        raise _DamagedError(f"the root page {root} (depth {depth}) of the {name} is not in use")
    page = os.pread(fd, _PAGE_HEAD.size, root * psize)
    if len(page) < _PAGE_HEAD.size:
        raise _DamagedError(f"the root page {root} of the {name} is beyond the end of the file")
    pgno, _, kind, _, _ = _PAGE_HEAD.unpack_from(page)
    if pgno != root or kind & _P_KINDS != (_P_LEAF if depth == 1 else _P_BRANCH):
        kind_name = "leaf" if depth == 1 else "branch"
        raise _DamagedError(f"the root page {root} of the {name} is not a {kind_name}")


def _free_pages(fd: int, psize: int, root: int, last_page: int) -> set[int]:
    """Page numbers in LMDB's free list (empty if it is unusual or too big to read here)."""
    free: set[int] = set()
    stack = [root]
    try:
        for _ in range(_FREE_LIST_PAGES):
            if not stack:
                return free
            pgno = stack.pop()
            page = os.pread(fd, psize, pgno * psize) if pgno <= last_page else b""
            number, _, kind, lower, _ = _PAGE_HEAD.unpack_from(page)
            if number != pgno or not kind & (_P_BRANCH | _P_LEAF):
                return set()
            for i in range((lower - _PAGE_HEAD.size) // 2):
                (offset,) = struct.unpack_from("=H", page, _PAGE_HEAD.size + 2 * i)
                low, high, flags, _ = _NODE_HEAD.unpack_from(page, offset)
                if kind & _P_BRANCH:
                    stack.append(low | high << 16 | flags << 32)  # a child page number
                else:
                    free.update(_free_ids(fd, psize, page, offset, last_page))
    except struct.error:  # a record or page shorter than it claims: leave it to LMDB
        return set()
    return set()


def _free_ids(fd: int, psize: int, page: bytes, offset: int, last_page: int) -> tuple[int, ...]:
    """The page numbers in the free-list record at ``offset`` (an MDB_IDL: count, then ids)."""
    low, high, flags, key_size = _NODE_HEAD.unpack_from(page, offset)
    size, at = low | high << 16, offset + _NODE_HEAD.size + key_size
    if flags & _F_BIGDATA:  # the list is on overflow pages
        (overflow,) = struct.unpack_from("=Q", page, at)
        where = overflow * psize + _PAGE_HEAD.size
        ids = os.pread(fd, size, where) if overflow <= last_page else b""
    else:
        ids = page[at : at + size]
    (count,) = struct.unpack_from("=Q", ids)
    return struct.unpack_from(f"={count}Q", ids, 8)
