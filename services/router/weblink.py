"""`/web` in a chat: an owner or admin gets a one-time sign-in link to the web dashboard, in a direct chat only.

The router owns chat commands and roles, so it decides who may ask and where; the web service owns links, so
the router asks it for one (`clawden.ctl.web.login`, over the bus) and replies like any other reply, keyed by
the message so a redelivery after a crash is one reply (the outbound stream drops the duplicate). From anyone
else `/web` is plain text, routed as usual; from a sender its bridge could not vouch for, it is dropped."""

from __future__ import annotations

import logging
import time

from nats.aio.msg import Msg
from nats.js.api import Header

from clawden import control
from clawden.bus import events as ev
from clawden.bus import nak, subjects
from clawden.bus.ctl import web as web_ctl
from clawden.runtime import ServiceContext
from services.router import commands
from services.router.entities import user_id_of
from services.router.store import Roles

log = logging.getLogger("clawden.router")
WORD = "web"
IN_GROUP = "I send sign-in links only in a direct chat: message me /web there."


def asker(event: ev.Inbound, roles: Roles) -> str:
    """The owner or admin who sent `/web` (their user id), or "" when this is not that. A message its bridge
    refused (a mail whose From failed DKIM) asks nothing, whoever it names: routed, it is recorded dropped."""
    if not isinstance(event, ev.InboundMessage) or event.refused or commands.parse(event.text).word != WORD:
        return ""
    user = user_id_of(event.route.channel, event.sender.id)
    owner, admin, admin_of = roles.standing(user)
    return user if owner or admin or admin_of else ""


def link_text(link: web_ctl.LoginLink, now: float) -> str:
    minutes = max(1, round((link.expires_at - now) / 60))
    return f"Your sign-in link to Clawden, as {link.user}: it works once, for {minutes} minutes.\n{link.url}"


async def answer(ctx: ServiceContext, event: ev.InboundMessage, user: str, msg: Msg) -> bool:
    """Reply with a link (or why not), then ack; False when the reply could not be published (nak'd)."""
    if event.is_group:
        text = IN_GROUP
    else:
        try:
            link = await control.ask_on(ctx.nc, web_ctl.LOGIN, web_ctl.LoginRequest(user=user), timeout=10)
            text = link_text(link, time.time())
            log.info("sent %s a sign-in link for the web", user, extra={"user": user})
        except control.ControlError as exc:
            text = f"No sign-in link: {exc}"
    reply = ev.OutboundMessage(
        id=f"router:{event.key}:web",
        route=event.route,
        text=text,
        reply_to=event.message_id,
        kind="reply",
        answering=event.message_id,
    )
    try:
        await ctx.js.publish(
            subjects.outbound(event.route.channel, event.route.chat_id),
            ev.encode(reply),
            headers={Header.MSG_ID: reply.id},
        )
    except Exception as exc:
        log.warning("could not send the /web reply to %s: %r", user, exc)
        await nak(msg)
        return False
    await msg.ack()
    return True
