"""Coalesced rewind: a run of in-place changes undone per path gives back the exact old file.

Two properties:

- :class:`xoengine.tree.Extents` against a byte-by-byte model: claims give each
  byte to the first claim that covers it (below its limit), and the pieces
  cover exactly the claimed bytes, once each;
- through a real engine: one file (and a second one, so that runs hold several
  paths) gets many overlapping writes, truncations, extensions, appends and
  chmods, each captured, between a rewind point and the end. Rewinding r1 to the
  point yields the point's bytes, size and mode exactly, the undo log holds
  nothing after the point, and a second rewind back to the point is a no-op.
"""

from __future__ import annotations

import os
import random
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xoengine.engine import Engine
from xoengine.rewind import plan_run
from xoengine.testing import snapshot_contents
from xoengine.tree import Extents

EXAMPLES = int(os.environ.get("REWIND_EXAMPLES", "400"))

claims = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 120), st.none() | st.integers(0, 400)),
    max_size=25,
)


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(claims=claims)
def test_extents_give_each_byte_to_its_first_claim(
    claims: list[tuple[int, int, int | None]],
) -> None:
    model: dict[int, tuple[int, int]] = {}  # byte -> (claim index, offset in its blob)
    extents = Extents()
    for index, (offset, length, limit) in enumerate(claims):
        blob_id = index.to_bytes(25, "big")
        extents.claim(offset, blob_id, length, limit)
        end = offset + length if limit is None else min(offset + length, limit)
        for byte in range(offset, end):
            model.setdefault(byte, (index, byte - offset))
    got: dict[int, tuple[int, int]] = {}
    for offset, blob_id, start, length in extents.pieces:
        assert length > 0
        for i in range(length):
            assert offset + i not in got, "a byte written twice"
            got[offset + i] = (int.from_bytes(blob_id, "big"), start + i)
    assert got == model
    regrouped = sorted(
        (offset, blob_id, start, length)
        for blob_id, uses in extents.by_blob().items()
        for offset, start, length in uses
    )
    assert regrouped == sorted(extents.pieces)


CHANGES = ["write", "write", "write", "truncate", "extend", "append", "chmod", "rewrite"]


@settings(
    max_examples=max(EXAMPLES // 8, 10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    steps=st.integers(5, 40),
    block_size=st.sampled_from([512, 4096]),
)
def test_rewinding_many_in_place_changes_gives_back_the_exact_file(
    seed: int, steps: int, block_size: int
) -> None:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="xo-coalesce-") as tmp:
        master, r1 = os.path.join(tmp, "master"), os.path.join(tmp, "r1")
        os.mkdir(master)
        names = [os.path.join(master, "f"), os.path.join(master, "g")]
        for name in names:
            with open(name, "wb") as f:
                f.write(rng.randbytes(rng.randint(0, 20000)))
        with Engine.open(os.path.join(tmp, "state"), durability="nosync") as eng:
            sc = eng.create_scenario(
                "co", master=master, replicas={"r1": r1}, block_size=block_size
            )
            sc.start()
            point = sc.set_rewind_point("p")
            want = snapshot_contents(master)
            want_mtimes = [os.stat(name).st_mtime_ns for name in names]
            for _ in range(steps):
                name = rng.choice(names)
                size = os.path.getsize(name)
                what = rng.choice(CHANGES)
                if what == "write":
                    with open(name, "r+b") as f:
                        f.seek(rng.randrange(size + 1))
                        f.write(rng.randbytes(rng.randint(1, 6000)))
                elif what == "truncate":
                    os.truncate(name, rng.randrange(size + 1))
                elif what == "extend":
                    os.truncate(name, size + rng.randint(1, 9000))
                elif what == "append":
                    with open(name, "ab") as f:
                        f.write(rng.randbytes(rng.randint(1, 5000)))
                elif what == "chmod":
                    os.chmod(name, rng.choice([0o600, 0o640, 0o644, 0o755]))
                else:  # a new content, new size, same file
                    with open(name, "r+b") as f:
                        data = rng.randbytes(rng.randint(0, 12000))
                        f.write(data)
                        f.truncate(len(data))
                sc.capture()
            sc.wait_replicated()
            applier = sc._appliers["r1"]
            records = applier.undo.records(after=point.position)
            assert {r.op for r in records} <= {"bytes", "meta", "content"}
            plans = plan_run(records[::-1])
            assert sum(p.records for p in plans) == len(records)
            sc.rewind("r1", "p")
            assert snapshot_contents(r1) == want
            got_mtimes = [os.stat(os.path.join(r1, os.path.basename(n))).st_mtime_ns for n in names]
            assert got_mtimes == want_mtimes
            assert applier.undo.records(after=point.position) == []
            sc.rewind("r1", "p")
            assert snapshot_contents(r1) == want
