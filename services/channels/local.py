"""The terminal channel (`clawden chat`): what you type goes in as chat messages, replies print here."""

from __future__ import annotations

import asyncio
import getpass
import sys
import time
import uuid

from nats.aio.msg import Msg

from clawden.bus import Consumer, bind, connect, consume, ensure_streams, publish, subjects
from clawden.bus import events as ev
from clawden.config import Config

CHANNEL = "local"


def terminal_outbound(chat_id: str) -> Consumer:
    return Consumer("CLAWDEN_OUTBOUND", f"channel-{CHANNEL}-{subjects.token(chat_id)}",
                    subjects.outbound(CHANNEL), ack_wait=30.0, deliver_new=True)


def inbound_event(chat_id: str, user: str, text: str) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel=CHANNEL, chat_id=chat_id), message_id=uuid.uuid4().hex,
        sender=ev.Sender(id=f"{CHANNEL}:{user}", name=user), text=text, sent_at=time.time(),
        chat_name="terminal")


async def chat(cfg: Config, *, chat_id: str = "terminal", once: str | None = None,
               timeout: float = 300.0) -> int:
    nc = await asyncio.wait_for(connect(cfg.nats_url, f"channel-{CHANNEL}", max_reconnect_attempts=3), 10)
    js = nc.jetstream()
    await ensure_streams(js)
    sub = await bind(js, terminal_outbound(chat_id))
    stopping = asyncio.Event()
    got_reply = asyncio.Event()
    interactive = once is None and sys.stdin.isatty()
    user = getpass.getuser()

    async def on_outbound(event: ev.OutboundMessage, msg: Msg) -> None:
        if event.route.chat_id != chat_id:
            return
        who = event.agent_group or "clawden"
        print(f"{chr(13) if interactive else ''}{who}> {event.text}", flush=True)
        if interactive:
            print("you> ", end="", flush=True)
        receipt = ev.DeliveryReceipt(outbound_id=event.id, route=event.route, ok=True,
                                     session_id=event.session_id, seq=event.seq,
                                     platform_message_id=uuid.uuid4().hex)
        await publish(js, subjects.receipt(CHANNEL), receipt, msg_id=f"receipt:{event.id}")
        got_reply.set()

    async def send(text: str) -> bool:
        if len(text.encode()) > ev.MAX_TEXT:
            print(f"(not sent: a message may hold at most {ev.MAX_TEXT} bytes)", file=sys.stderr)
            return False
        event = inbound_event(chat_id, user, text)
        await publish(js, subjects.inbound(CHANNEL), event, msg_id=event.key)
        return True

    receiver = asyncio.create_task(consume(sub, ev.OutboundMessage, on_outbound, stopping=stopping))
    code = 0
    try:
        if once is not None:
            if not await send(once):
                return 2
            try:
                await asyncio.wait_for(got_reply.wait(), timeout)
            except TimeoutError:
                print(f"(no reply within {timeout:.0f}s)", file=sys.stderr)
                code = 1
            return code
        if interactive:
            print(f"Talking to Clawden as {user} (Ctrl-D to leave).\nyou> ", end="", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            text = line.rstrip("\n")
            if text.strip():
                await send(text)
            elif interactive:
                print("you> ", end="", flush=True)
        if not interactive:
            # Piped input: give the last reply a moment before leaving.
            try:
                await asyncio.wait_for(got_reply.wait(), timeout)
            except TimeoutError:
                code = 1
        return code
    finally:
        stopping.set()
        await asyncio.wait_for(receiver, 5)
        await nc.drain()
