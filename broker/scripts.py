"""The queue's Lua scripts, read from the `.lua` files shipped in this package."""

from __future__ import annotations

from importlib import resources


def load(name: str) -> str:
    """The text of `broker/<name>.lua`."""
    return resources.files("broker").joinpath(f"{name}.lua").read_text(encoding="utf-8")
