"""`/web` from a chat: who the router answers with a sign-in link (owners and admins), and what stays plain text."""

from __future__ import annotations

import time

import msgspec
import pytest

from clawden.bus import events as ev
from clawden.bus.ctl import web as web_ctl
from services.router import weblink
from services.router.store import Roles

ROLES = Roles(owners=["telegram:1"], admins=["telegram:2"], scoped={"main": ["telegram:3"]})


def said(text: str, sender: str) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel="telegram", chat_id="c1"),
        message_id="m1",
        sender=ev.Sender(id=sender),
        text=text,
        sent_at=0.0,
    )


@pytest.mark.parametrize(
    ("text", "sender", "asker"),
    [
        ("/web", "1", "telegram:1"),  # the owner
        ("/web@ClawdenBot", "telegram:2", "telegram:2"),  # a global admin, Telegram's addressed form
        ("/WEB please", "3", "telegram:3"),  # an admin of one group
        ("/web", "4", ""),  # anyone else: plain text, routed as usual
        ("web", "1", ""),  # not the command
        ("/website", "1", ""),
    ],
)
def test_only_an_owner_or_admin_asks_for_a_link(text: str, sender: str, asker: str) -> None:
    assert weblink.asker(said(text, sender), ROLES) == asker


def test_an_edit_is_never_an_ask() -> None:
    edit = ev.InboundEdit(
        route=ev.Route(channel="telegram", chat_id="c1"),
        message_id="m1",
        sender=ev.Sender(id="1"),
        text="/web",
        edit_id="e1",
    )
    assert weblink.asker(edit, ROLES) == ""


def test_the_reply_names_who_signs_in_and_for_how_long() -> None:
    now = time.time()
    link = web_ctl.LoginLink(url="http://127.0.0.1:8790/login/abc", user="telegram:1", expires_at=now + 600)
    text = weblink.link_text(link, now)
    assert text.endswith("\nhttp://127.0.0.1:8790/login/abc") and "telegram:1" in text and "10 minutes" in text


def test_a_message_its_bridge_refused_never_asks_for_a_link() -> None:
    # A mail that says it is from the owner and fails DKIM: the router records it dropped, and sends no link.
    forged = msgspec.structs.replace(said("/web", "1"), refused="unverified sender: dkim=fail")
    assert weblink.asker(forged, ROLES) == ""
