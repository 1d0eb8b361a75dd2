"""Where the files Clawden ships beside its code live: `container/` (the agent image's build context) and
`units/` (the unit templates). A wheel carries them in `clawden/_resources/` (setup.py copies them there);
a checkout, editable install included, has them at its top level."""

from __future__ import annotations

from pathlib import Path

NAMES = ("container", "units")
PACKAGED = Path(__file__).resolve().parent / "_resources"
CHECKOUT = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    """The packaged copy of `name` when this is an installed wheel, else the checkout's folder."""
    if name not in NAMES:
        raise ValueError(f"unknown resource {name!r}; Clawden ships {', '.join(NAMES)}")
    packaged = PACKAGED / name
    return packaged if packaged.is_dir() else CHECKOUT / name
