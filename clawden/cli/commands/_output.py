"""How `clawden` commands print what services answer: aligned tables, local times, or JSON."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

T = TypeVar("T")


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def when(at: float | None, *, seconds: bool = False) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M", time.localtime(at)) if at else "-"


def show(args: argparse.Namespace, data: T, render: Callable[[T], str]) -> int:
    """`--json` prints the service's reply (a control Struct, or a list of them) as JSON; otherwise `render`
    makes it readable."""
    if args.json:
        print(json.dumps(msgspec.to_builtins(data), indent=2))
    elif isinstance(data, list) and not data:
        print("(none)")
    else:
        print(render(data))
    return 0
