"""Scenario layout: how master roots and replica directories map to scenario paths.

Room: algorithms/storage. May import ``errors`` and ``walk``.

A scenario protects one or more master roots. With one root, a scenario path
is relative to it and a replica mirrors it directly. With several roots, the
first part of a scenario path is the root's *name* (its base name, which must
be unique), and a replica holds one sub-directory per root name. Every path
that reaches a tree goes through :func:`walk.normalize_relpath` and
:func:`walk.open_parent`, so nothing is ever written outside a root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from xoengine.errors import ConfigurationError
from xoengine.walk import normalize_relpath

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """The roots of a scenario and how scenario paths map onto them."""

    roots: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.roots:
            raise ConfigurationError(detail="a scenario needs at least one master root")
        names = [self.root_name(r) for r in self.roots]
        if len(self.roots) > 1 and len(set(names)) != len(names):
            raise ConfigurationError(detail=f"master roots need distinct base names: {names}")

    @staticmethod
    def root_name(root: str) -> str:
        """The name of ``root`` inside a multi-root scenario (its base name)."""
        return os.path.basename(os.path.normpath(root))

    @property
    def single(self) -> bool:
        """Whether the scenario has one root (paths are relative to it)."""
        return len(self.roots) == 1

    def prefix(self, index: int) -> str:
        """Scenario-path prefix of root ``index`` ("" for a single root)."""
        return "" if self.single else self.root_name(self.roots[index]) + "/"

    def scenario_path(self, index: int, relpath: str) -> str:
        """The scenario path of ``relpath`` under root ``index``."""
        return self.prefix(index) + relpath

    def split(self, path: str) -> tuple[int, str]:
        """Map a scenario path to (root index, relpath under that root); validates it."""
        path = normalize_relpath(path)
        if self.single:
            return 0, path
        head, _, rest = path.partition("/")
        for index, root in enumerate(self.roots):
            if self.root_name(root) == head:
                return index, rest
        raise ConfigurationError(detail=f"{path!r} is under no root of this scenario")

    def master_path(self, path: str) -> str:
        """Where the master holds the scenario path ``path`` (validated)."""
        index, rel = self.split(path)
        return os.path.join(self.roots[index], rel)

    def root_paths(self) -> set[str]:
        """The scenario paths of the roots themselves (none for the one root: "")."""
        return {self.prefix(i).rstrip("/") for i in range(len(self.roots))}

    def master_place(self, path: str) -> tuple[str, str]:
        """The master root holding the scenario path ``path``, and the path below it."""
        index, rel = self.split(path)
        return self.roots[index], rel

    def replica_subdir(self, index: int) -> str:
        """Where root ``index`` lives inside a replica directory ("" = the replica itself)."""
        return "" if self.single else self.root_name(self.roots[index])
