"""Subprocess for test_applier_crash: resume a replica and apply its backlog until killed.

Applies ``limit`` events per step and prints a line after each step, so the
parent can kill it at a random point of the backlog (inside the step after
the one it last heard of) rather than after it has finished.
"""

import sys

from xoengine.engine import Engine

state, name, replica, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Engine.open(state, durability="sync") as eng:
    sc = eng.scenario(name)
    applier = sc._appliers[replica]
    print("opened", flush=True)
    sc.resume(replica)  # the scenario is stopped: nothing applies until asked
    top = eng.recorder.max_notification_id() or 0
    while (at := applier.position()) < top:
        applier.apply_available(limit=limit, upto=at + limit)
        if applier.position() == at:
            break  # nothing more it can apply: the parent's check will tell
        print("applied", flush=True)
    print("done", flush=True)
