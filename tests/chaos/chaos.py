"""Chats talking to a whole Clawden while its processes are killed one by one, and the check that
every message still got exactly its own reply: shared by tests/chaos and bench/chaos.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from clawden import config, natsauth
from clawden.bus import events as ev
from tests.e2e.harness import Stack, Terminal, service_pid

SERVICES = ("router", "runner", "vault", "scheduler", "approvals")


@dataclass
class Chat:
    name: str
    sent: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    replied_at: list[float] = field(default_factory=list)  # time.monotonic() of each reply


async def talk(stack: Stack, chat: Chat, messages: int, reply_timeout: float, until: asyncio.Event) -> None:
    """One message at a time: the next goes when the last was answered, as a person types; at least
    `messages`, and on until the chaos is over."""
    async with Terminal(stack, chat.name) as term:
        i = 0
        while i < messages or not until.is_set():
            text = f"{chat.name} message {i}"
            i += 1
            chat.sent.append(text)
            await term.send(text)
            chat.replies.append((await answer(term, reply_timeout)).text)
            chat.replied_at.append(time.monotonic())
        with contextlib.suppress(TimeoutError):  # a second reply to anything would show up here
            chat.replies.append((await answer(term, 3)).text)


async def answer(term: Terminal, timeout: float) -> ev.OutboundMessage:
    """The next reply, past the host's notices: one says a message is still to be answered (the runner's slots
    are all taken, it is tried again), as `clawden chat --once` reads them."""
    while (reply := await term.reply(timeout=timeout)).kind == "notice":
        pass
    return reply


def mismatches(chats: list[Chat]) -> list[tuple[str, str, str]]:
    """(chat, what was sent, the reply it got) wherever the reply does not answer that message."""
    return [
        (chat.name, sent, reply[:300])
        for chat in chats
        for sent, reply in zip(chat.sent, chat.replies, strict=False)
        if f">{sent}<" not in reply
    ]


def check(chats: list[Chat]) -> dict[str, int]:
    """Lost, duplicated and misrouted replies across all chats (all zero when the run was sound)."""
    lost = duplicated = misrouted = 0
    for chat in chats:
        lost += max(0, len(chat.sent) - len(chat.replies))
        duplicated += max(0, len(chat.replies) - len(chat.sent))
        misrouted += sum(1 for sent, reply in zip(chat.sent, chat.replies, strict=False) if f">{sent}<" not in reply)
    return {"lost": lost, "duplicated": duplicated, "misrouted": misrouted}


def pid_of(*pgrep: str) -> int | None:
    out = subprocess.run(["pgrep", *pgrep], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) if out.stdout.split() else None


def nats_pid(stack: Stack) -> int | None:
    return pid_of("-f", f"nats-server -c {natsauth.conf_path(config.load(stack.home))}")


async def kill_service(stack: Stack, service: str) -> None:
    pid = await service_pid(stack, service)
    os.kill(pid, signal.SIGKILL)
    for _ in range(300):  # `clawden up` brings it back
        if await service_pid(stack, service) != pid:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{service} was not started again")


async def kill_nats(stack: Stack) -> None:
    pid = nats_pid(stack)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(150):
        if nats_pid(stack) not in (None, pid):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the NATS server was not started again")


async def kill_an_agent(stack: Stack) -> None:
    containers = stack.containers()
    if containers:
        await asyncio.to_thread(containers[0].kill)


async def pause_docker(stack: Stack, seconds: float = 3.0) -> None:
    """The engine stops answering for a while (SIGSTOP), as under a host's memory pressure."""
    pid = pid_of("-xo", "dockerd")
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


KINDS: list[tuple[str, Callable[[Stack], Awaitable[None]]]] = [
    *((name, lambda stack, name=name: kill_service(stack, name)) for name in SERVICES),
    ("nats", kill_nats),
    ("agent container", kill_an_agent),
    ("docker engine paused", pause_docker),
]


async def run(
    stack: Stack,
    *,
    chats: int,
    messages: int,
    every: float,
    rounds: int = 1,
    reply_timeout: float = 180,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, int], list[Chat]]:
    """`chats` chats talk (`messages` each at least) while a kill happens every `every` seconds, each
    kind in turn, `rounds` times over; they stop once the last kill is `every` seconds behind."""
    talking = [Chat(f"chaos-{i}") for i in range(chats)]
    over = asyncio.Event()
    traffic = asyncio.gather(*(talk(stack, c, messages, reply_timeout, over) for c in talking))
    try:
        for name, kill in KINDS * rounds:
            await asyncio.sleep(every)
            log(f"kill: {name}")
            await kill(stack)
        await asyncio.sleep(every)
        over.set()
        await traffic
    finally:
        traffic.cancel()
        with contextlib.suppress(BaseException):
            await traffic
    return check(talking), talking
