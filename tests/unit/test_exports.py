"""The public surface is deliberate: __all__ lists exactly what xoengine re-exports."""

from __future__ import annotations

import xoengine


def test_exports_all_names_exist_and_are_documented() -> None:
    for name in xoengine.__all__:
        obj = getattr(xoengine, name)
        assert (obj.__doc__ or "").strip(), name


def test_exports_list_is_guarded() -> None:
    public = {n for n in dir(xoengine) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(xoengine.__all__) | {"TYPE_CHECKING"}
