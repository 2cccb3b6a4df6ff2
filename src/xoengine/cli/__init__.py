"""The ``xoengine`` command line: a thin shell over the library.

Room: edge. May import everything below it; nothing imports it.

Verbs::

    xoengine quickstart [--dir DIR]            the main job: a whole replication round trip
    xoengine demo [--dir DIR]                  journal demo: write events, verify, print the log
    xoengine journal verify|log|copy ...       inspect, check and hot-copy a journal
    xoengine scenario create|list|show|remove  define scenarios in a state directory
    xoengine start|stop|capture|sync|suspend|resume|stats|report STATE NAME ...
    xoengine replay|cat|history|diff|bisect STATE NAME ...   forensics from the journal alone
    xoengine rewind|rewind-points|difference STATE NAME ...

Exit codes: 0 success, 2 usage/configuration, 3 storage or replication, 4 damage found.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from xoengine.cli import forensic, journal, scenario
from xoengine.errors import XoError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="xoengine", description=(__doc__ or "").splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    scenario.add_parsers(verbs)
    forensic.add_parsers(verbs)
    journal.add_parsers(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; coded errors print their code, message and hint."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except XoError as e:
        print(f"error {e.code}: {e.message}\nhint: {e.hint}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `xoengine journal log | head`
        return 0
