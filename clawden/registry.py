"""Which chat bridges this install has: the built-in ones under `services.channels`, and any an installed
package registers under the `clawden.channels` entry point group. Imports nothing of Clawden's, so the
config, the runtime, the units and the CLI can all ask it without importing each other."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil

CHANNEL_MODULE = "services.channels.{}"
CHANNEL_ENTRY_POINTS = "clawden.channels"  # third-party bridges: `<name> = "pkg.module:main"`


def installed_channels() -> dict[str, str]:
    """Bridge name -> where it comes from: a package's entry point, or a module built into Clawden."""
    found: dict[str, str] = {}
    for entry in importlib.metadata.entry_points(group=CHANNEL_ENTRY_POINTS):
        dist = entry.dist
        found.setdefault(entry.name, f"{dist.name} {dist.version}" if dist is not None else entry.value)
    package = importlib.import_module(CHANNEL_MODULE.rsplit(".", 1)[0])
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in found and hasattr(importlib.import_module(CHANNEL_MODULE.format(module.name)), "main"):
            found[module.name] = "built in"
    return dict(sorted(found.items()))
