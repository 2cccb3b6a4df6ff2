"""Subprocess for test_applier_crash: resume a replica and apply its backlog until killed."""

import sys

from xoengine.engine import Engine

state, name, replica = sys.argv[1:4]
with Engine.open(state, durability="sync") as eng:
    sc = eng.scenario(name)
    print("opened", flush=True)
    sc.resume(replica)
    sc.wait_replicated()
    print("done", flush=True)
