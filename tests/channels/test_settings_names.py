"""The settings `clawden/channelsettings.py` lists for each built-in bridge are exactly the ones its code reads, so the
unknown-name warnings and doctor's checks cannot drift from the bridges: a key read as `settings.get("k")`,
`settings["k"]`, passed after the settings to a helper (`number(CHANNEL, settings, "k", ...)`), or to the email
bridge's `words("k")` (its table is `s` there)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from clawden.channelsettings import SETTINGS

CHANNELS = Path(__file__).resolve().parents[2] / "services" / "channels"
SOURCES = {name: [CHANNELS / f"{name}.py"] for name in SETTINGS} | {"email": sorted((CHANNELS / "mail").glob("*.py"))}


def _settings(node: ast.expr) -> bool:
    """A bridge's table of settings: a name for it, or `channel_settings(...)` itself."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "channel_settings"
    return isinstance(node, ast.Name) and ("settings" in node.id or node.id == "s")


def _key(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def keys_read(tree: ast.AST) -> set[str]:
    keys: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _settings(node.value):
            keys.add(_key(node.slice))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr == "get" and _settings(func.value) and node.args:
                keys.add(_key(node.args[0]))
            if isinstance(func, ast.Name) and func.id == "words" and node.args:
                keys.add(_key(node.args[0]))
            for i, arg in enumerate(node.args[:-1]):
                if _settings(arg):
                    keys.add(_key(node.args[i + 1]))
    return {k for k in keys if k is not None}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_listed_settings_are_the_ones_the_bridge_reads(name: str) -> None:
    read = set().union(*(keys_read(ast.parse(path.read_text())) for path in SOURCES[name]))
    assert read == set(SETTINGS[name]), (sorted(read - set(SETTINGS[name])), sorted(set(SETTINGS[name]) - read))
