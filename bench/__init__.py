"""Benchmarks: each is `python -m bench.<name>`, prints its figures and keeps them in bench/results/ (README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def keep(result: dict[str, Any], out: Path, *, show: bool = True) -> None:
    """Write a run's figures to `out` (as JSON), and print them unless the bench prints its own summary."""
    text = json.dumps(result, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    if show:
        print(text)
