"""Every process of a running Clawden killed in turn while chats talk to it: every message gets
exactly one reply, with the right content, in order per chat."""

from __future__ import annotations

import pytest

from tests.chaos import chaos
from tests.e2e.harness import Stack

pytestmark = pytest.mark.docker
STACK_OPTIONS = {"runner": "hang_timeout = 30"}


async def test_every_message_is_answered_once_while_each_process_is_killed_in_turn(stack: Stack) -> None:
    figures, chats = await chaos.run(stack, chats=4, messages=8, every=4)

    assert figures == {"lost": 0, "duplicated": 0, "misrouted": 0}, [(c.sent, c.replies) for c in chats]
