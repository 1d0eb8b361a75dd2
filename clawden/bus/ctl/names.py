"""The naming rules of the control wires, in one place: agent groups (the events' rule), users, channels."""

from __future__ import annotations

import re

from clawden.bus.events import GROUP_NAME, GROUP_PATTERN

# A user is one platform identity: `<channel>:<handle>`.
USER_PATTERN = r"^[A-Za-z0-9_-]{1,64}:\S.{0,254}$"
USER_ID = re.compile(USER_PATTERN)
CHANNEL_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
CHANNEL = re.compile(CHANNEL_PATTERN)

__all__ = ["CHANNEL", "CHANNEL_PATTERN", "GROUP_NAME", "GROUP_PATTERN", "USER_ID", "USER_PATTERN"]
