"""Refusals a control verb gives that the HTTP API tells apart by status: unknown (404) and taken (409).
Both are ControlErrors, so the bus and the CLI show them as any other refusal."""

from __future__ import annotations

from clawden.runtime import ControlError


class NotFound(ControlError):
    """The thing named does not exist."""


class Conflict(ControlError):
    """A thing of that name exists already."""
