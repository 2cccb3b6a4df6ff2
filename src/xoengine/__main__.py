"""``python -m xoengine``: the command line, as the ``xoengine`` script runs it."""

import runpy

runpy.run_module("xoengine.cli", run_name="__main__", alter_sys=True)
