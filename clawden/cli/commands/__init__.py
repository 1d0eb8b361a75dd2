"""`clawden` subcommands by area. Each top-level module has `register(subparsers)`; commands talk to services
only over NATS request/reply (`clawden.ctl.<service>.<verb>`), so they work from another machine."""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):  # a module without one adds verbs under another command's
            module.register(sub)
