"""Shared fixtures: a clean environment for every test (no XO*/LMDB_*/PERSISTENCE_MODULE leaks)."""

from __future__ import annotations

import os

import pytest

_PREFIXES = ("XO", "LMDB_", "PERSISTENCE_MODULE", "TRANSCODER_TOPIC", "CIPHER_", "COMPRESSOR_TOPIC")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(_PREFIXES):
            monkeypatch.delenv(key)
