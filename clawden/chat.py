"""`clawden chat`, the terminal channel: what you type goes in as chat messages, replies print here.

A card prints as numbered choices; typing one of the numbers presses that button. A paste of several
lines is one message (the terminal brackets it, GNU readline keeps it whole), and so is piped input
up to its end, unless `--lines` asks for a message per line. A chat outlives a restart of `clawden up`:
it says when Clawden goes and comes back, and what was typed meanwhile is sent then, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import getpass
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO, get_args

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError

from clawden.bus import Consumer, bind, consume, ensure_streams, publish_stored, subjects
from clawden.bus import events as ev
from clawden.bus.ctl import Nothing
from clawden.bus.ctl.common import PING
from clawden.bus.ctl.router import CHATS_LIST, ChatList
from clawden.bus.pull import Puller
from clawden.cardtext import render_text
from clawden.config import Config
from clawden.control import ControlError, NoAnswer, NotListening, ask_on
from clawden.installed import start_hint
from clawden.owner import Unreachable, connect_cli

CHANNEL = "local"
DEFAULT_CHAT = "terminal"
# Tries of the first connect, so a chat started without Clawden says so at once (in about a second and a half); once
# in, it waits for Clawden to come back without limit.
FIRST_TRIES = 4
ROUTER_WAIT = 5.0  # seconds a router still starting (`clawden up` a moment ago) is given to answer its ping
CHATS_WAIT = 2.0  # seconds the router is given to list the chats, for `--chat NAME`'s typo check
LOST = "lost Clawden (is `clawden up` running?); waiting for it to come back…"
BACK = "back"


def terminal_outbound(chat_id: str) -> Consumer:
    # Every lane of the channel in stream order (each terminal skips other chats' events).
    return Consumer(
        "CLAWDEN_OUTBOUND",
        f"channel-{CHANNEL}-{subjects.token(chat_id)}",
        subjects.outbound_all(CHANNEL),
        ack_wait=30.0,
        deliver_new=True,
    )


def inbound_event(chat_id: str, user: str, text: str) -> ev.InboundMessage:
    return ev.InboundMessage(
        route=ev.Route(channel=CHANNEL, chat_id=chat_id),
        message_id=uuid.uuid4().hex,
        sender=ev.Sender(id=f"{CHANNEL}:{user}", name=user),
        text=text,
        sent_at=time.time(),
        chat_name="terminal",
    )


@dataclass(frozen=True)
class OpenCard:
    card_id: str  # the id of the outbound message that carried it
    message_id: str
    button_ids: tuple[str, ...]


class TerminalChat:
    """What the terminal shows for each outbound event, and what a typed line means."""

    def __init__(self, chat_id: str, user: str, *, once: bool = False) -> None:
        self.chat_id = chat_id
        self.user = user
        self.once = once  # `--once`: nothing can be typed, so a card says how to decide it elsewhere
        self.route = ev.Route(channel=CHANNEL, chat_id=chat_id)
        self.open_card: OpenCard | None = None
        self.texts: dict[str, str] = {}  # what was printed for each message id, newest last

    def show(self, event: ev.OutboundMessage | ev.OutboundEdit | ev.OutboundReaction, message_id: str) -> str:
        # The agent's words carry its group's name; Clawden's own (an approval card, a notice, an error) not.
        speaks = isinstance(event, ev.OutboundMessage) and event.kind == "reply"
        who = (event.agent_group if isinstance(event, ev.OutboundMessage) and speaks else "") or "clawden"
        if isinstance(event, ev.OutboundReaction):
            return f"{who} reacted {event.emoji}"
        text = render_text(event.text, event.card)
        target = event.target_message_id if isinstance(event, ev.OutboundEdit) else message_id
        before, self.texts[target] = self.texts.pop(target, ""), text
        if len(self.texts) > SHOWN_KEPT:
            self.texts.pop(next(iter(self.texts)))
        if isinstance(event, ev.OutboundEdit):
            if self.open_card is not None and self.open_card.message_id == event.target_message_id:
                self.open_card = None  # decided (or expired) elsewhere: its numbers mean nothing now
            # A decided card comes back whole with its outcome below: print only what is new.
            added = text[len(before) :].strip() if before and text.startswith(before) else ""
            text = f"(edited) {added or text}"
        lines = [f"{who}> {text}"]
        if event.card is not None and event.card.buttons:
            choices = "   ".join(f"[{i}] {b.label}" for i, b in enumerate(event.card.buttons, 1))
            lines.append(f"    {choices}   {self.how_to_choose(event.id, event.card)}")
            card_id = event.id
            self.open_card = OpenCard(card_id, message_id, tuple(b.id for b in event.card.buttons))
        return "\n".join(lines)

    def how_to_choose(self, card_id: str, card: ev.Card) -> str:
        if not self.once:
            return "(type a number to choose)"
        # An approval card's outbound id is its card id, which `clawden approvals` takes as well as the request's.
        if {"approve", "deny"} <= {b.id for b in card.buttons}:
            return f"(decide with `clawden approvals approve {card_id}` or `clawden approvals deny {card_id}`)"
        return f"(answer with `clawden approvals answer {card_id} <number>`)"

    def line(self, text: str) -> ev.InboundMessage | ev.InboundAction:
        """A typed line: the number of an open card's choice presses that button; anything else is chat."""
        card, choice = self.open_card, text.strip()
        if card is not None and choice.isdigit() and 1 <= int(choice) <= len(card.button_ids):
            self.open_card = None
            return ev.InboundAction(
                route=self.route,
                action_id=uuid.uuid4().hex,
                sender=ev.Sender(id=f"{CHANNEL}:{self.user}", name=self.user),
                card_id=card.card_id,
                button_id=card.button_ids[int(choice) - 1],
                message_id=card.message_id,
                sent_at=time.time(),
            )
        return inbound_event(self.chat_id, self.user, text)


SHOWN_KEPT = 1000
PROMPT = "you> "
# What the agent runner answers itself, for an admin of the group (the owner is one): the words are the bus's
# (`ev.WakeCommand`), these are what /help says of each (tests/test_chat.py keeps the two in step).
RUNNER_COMMANDS: dict[ev.WakeCommand, str] = {
    "clear": "start a fresh conversation (the agent's memory file stays)",
    "cost": "what this chat and its last message cost",
    "compact": "have Claude Code summarise the conversation so far",
    "context": "how full the model's context is",
    "files": "what the group's folder holds",
}


def help_text() -> str:
    said = [(word, RUNNER_COMMANDS.get(word, "")) for word in get_args(ev.WakeCommand) if word]
    said += [("help", "this list"), ("exit", "leave (also /quit, or Ctrl-D)")]
    lines = (f"  {'/' + word:<9}{what}".rstrip() for word, what in said)
    return "\n".join(["Everything you type goes to your assistant, except:", *lines])


HELP = help_text()


class Reader:
    """Lines from the terminal or a pipe, read in a daemon thread (so Ctrl-C ends the chat at once
    instead of after the next Enter) and handed to the event loop; None at the end. In a terminal it is
    GNU readline, which brings a bracketed paste back as one text with its newlines."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stdin: TextIO, *, interactive: bool) -> None:
        self.loop = loop
        self.stdin = stdin
        self.interactive = interactive
        self.texts: asyncio.Queue[str | None] = asyncio.Queue()
        self.ready = threading.Event()  # the loop has handled the last text: read the next
        self.prompting = False  # the prompt is on screen (not while a typed line is being sent)

    def start(self) -> None:
        self.ready.set()
        threading.Thread(target=self._read, name="clawden-chat-input", daemon=True).start()

    def _read(self) -> None:
        if self.interactive:
            import readline  # noqa: F401 - input() edits lines (and keeps pastes whole) once it is loaded
        while True:
            self.ready.wait()
            self.ready.clear()
            text: str | None
            if self.interactive:
                self.prompting = True
                try:
                    text = input(PROMPT)
                except EOFError:
                    text = None
                self.prompting = False
            else:
                text = self.stdin.readline() or None
            self.loop.call_soon_threadsafe(self.texts.put_nowait, text)
            if text is None:
                return

    @staticmethod
    def typed() -> str:
        """What is on the input line right now, so a reply printed over it can put it back."""
        try:
            import readline
        except ImportError:
            return ""
        return readline.get_line_buffer()


class Paragraphs:
    """Piped input as messages: everything up to its end is one (a /command on its own line is handled
    where it stands), or one message per line."""

    def __init__(self, *, line_by_line: bool) -> None:
        self.line_by_line = line_by_line
        self.held: list[str] = []

    def feed(self, line: str | None) -> list[str]:
        if line is None:
            return self._flush()
        text = line.rstrip("\n")
        if self.line_by_line or text.strip().lower() in COMMANDS:
            return [*self._flush(), text]
        self.held.append(text)
        return []

    def _flush(self) -> list[str]:
        text, self.held = "\n".join(self.held).strip("\n"), []
        return [text] if text.strip() else []


@contextlib.contextmanager
def terminal_kept(stdin: TextIO, stdout: TextIO) -> Iterator[None]:
    """The terminal as it was when the chat began, also when Ctrl-C leaves readline mid-line (its raw
    mode and bracketed paste would otherwise stay on in the shell)."""
    try:
        import termios

        saved = termios.tcgetattr(stdin.fileno())
    except (ImportError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        termios.tcsetattr(stdin.fileno(), termios.TCSADRAIN, saved)
        print("\x1b[?2004l", end="", file=stdout, flush=True)


COMMANDS = ("/exit", "/quit", "/help")  # what the terminal handles itself


class Link:
    """Whether the chat reaches Clawden now. It waits for a `clawden up` that went away (a restart) for as long as
    that takes, says once that it went and once that it is back, and what must reach the bus waits on `up`. The
    connection tells it (it is `connect_cli`'s watcher), after its own log lines, and never of our own leaving."""

    def __init__(self) -> None:
        self.up = asyncio.Event()
        self.up.set()
        self.losses = 0  # how often it went: a failed publish that saw none is not the connection's doing
        # Where its lines go: the conversation's own way (`Conversation.note`) once there is one.
        self.say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)

    def went_since(self, losses: int) -> bool:
        """Whether Clawden went away since `losses` was read, or is away now: a failure then is the connection's."""
        return self.losses != losses or not self.up.is_set()

    async def lost(self) -> None:
        if not self.up.is_set():
            return  # said once already
        self.up.clear()
        self.losses += 1
        self.say(LOST)

    async def back(self) -> None:
        self.up.set()
        self.say(BACK)


class Conversation:
    """One terminal's side of a chat once connected: replies shown (and receipted) as they come, and
    what is typed or piped sent; `ask`, `talk` and `pipe` are the three ways a chat runs."""

    def __init__(
        self, js: JetStreamContext, link: Link, terminal: TerminalChat, stdout: TextIO, *, interactive: bool, once: bool
    ) -> None:
        self.js = js
        self.link = link
        link.say = self.note
        self.keyboard: Reader | None = None  # a person's, in a terminal
        self.terminal = terminal
        self.stdout = stdout
        self.interactive = interactive
        self.once = once
        self.stopping = asyncio.Event()
        self.got_reply = asyncio.Event()
        self.failed: list[str] = []  # ids of replies that said the message will not be answered
        self.shown: dict[str, None] = {}  # outbound ids already printed, oldest first
        self.asked = ""  # `--once`: the message id of what it sent, once sent

    def earlier(self, event: ev.Outbound) -> bool:
        """`--once`: a reply that is not the answer to its message. One that came before the message was sent (left
        unread by an earlier chat), or one that names another message it answers; one that names none (a reply from
        an older runner) counts as the answer once the message is sent, as before."""
        if not self.once or not isinstance(event, ev.OutboundMessage):
            return False
        return not self.asked or event.answering not in ("", self.asked)

    async def on_outbound(self, event: ev.Outbound, msg: Msg) -> None:
        if event.route.chat_id != self.terminal.chat_id or isinstance(event, ev.Typing):
            return
        if event.id in self.shown:
            return  # redelivered (its ack was lost, say to a NATS restart): shown once already
        self.shown[event.id] = None
        if len(self.shown) > SHOWN_KEPT:
            self.shown.pop(next(iter(self.shown)))
        message_id = event.target_message_id if not isinstance(event, ev.OutboundMessage) else uuid.uuid4().hex
        earlier = self.earlier(event)
        if self.interactive:
            self.note(self.terminal.show(event, message_id))
        elif earlier:  # stdout is the answer alone, for a script to read
            print(f"(earlier) {self.terminal.show(event, message_id)}", file=sys.stderr, flush=True)
        else:
            print(self.terminal.show(event, message_id), file=self.stdout, flush=True)
        receipt = ev.receipt_for(event, platform_message_id=message_id)
        await self.store(subjects.receipt(CHANNEL), receipt, msg_id=f"receipt:{event.id}")
        # A notice: the answer follows. An earlier reply: shown (and so receipted), and the answer still awaited.
        if isinstance(event, ev.OutboundMessage) and event.kind != "notice" and not earlier:
            if event.kind == "error":
                self.failed.append(event.id)
            if self.once:
                # Said before the ack that follows this handler, so the receiver stops right after it
                # instead of starting another pull and waiting out its expiry (a second per message).
                self.stopping.set()
            self.got_reply.set()

    def note(self, text: str) -> None:
        """A line of the chat's own: in a terminal over the input line, which is then drawn again below with what
        was typed on it; else on stderr (stdout is the replies alone, for a script to read). Before the keyboard is
        read (the chat still starting) there is no input line to draw again."""
        if self.interactive and self.keyboard is not None and self.keyboard.prompting:
            print(f"\r\x1b[K{text}\n{PROMPT}{Reader.typed()}", end="", file=self.stdout, flush=True)
        elif self.interactive:  # a typed line is on its way: its prompt comes back after it
            print(text, file=self.stdout, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    async def store(self, subject: str, event: ev.Event, *, msg_id: str) -> str:
        """Publish to the stream: "" once it holds the event, else why it does not. While Clawden is away this waits
        for it to come back and tries again with the same `msg_id`, so however many tries reach it, it is stored
        once (the streams' dedupe window is a day)."""
        while True:
            await self.link.up.wait()
            losses = self.link.losses
            try:
                await publish_stored(self.js, subject, event, msg_id=msg_id)
                return ""
            except (nats.errors.Error, TimeoutError) as exc:
                if not self.link.went_since(losses):
                    return f"Clawden did not take it ({type(exc).__name__}: {exc})"

    async def send(self, text: str) -> bool:
        if len(text.encode()) > ev.MAX_TEXT:
            print(f"(not sent: a message may hold at most {ev.MAX_TEXT} bytes)", file=sys.stderr)
            return False
        event = self.terminal.line(text)
        if self.once and isinstance(event, ev.InboundMessage):
            self.asked = event.message_id  # before it is out: its answer cannot come first
        if not self.link.up.is_set():
            self.note("(Clawden is away: this is sent when it is back; Ctrl-C leaves without sending it)")
        try:
            why = await self.store(subjects.inbound(CHANNEL), event, msg_id=event.key)
        except asyncio.CancelledError:  # Ctrl-C, or `--once`'s time up
            away = not self.link.up.is_set()
            self.note("(not sent: Clawden was away)" if away else "(not confirmed: Clawden did not acknowledge it)")
            raise
        if why:
            self.note(f"(not sent: {why})")
        return not why

    async def handle(self, text: str) -> bool:
        """One typed text: sent, or a command the terminal handles; False to leave."""
        command = text.strip().lower()
        if command in ("/exit", "/quit"):
            return False
        if command == "/help":
            print(HELP, file=self.stdout, flush=True)
        elif text.strip():
            await self.send(text)
        return True

    async def replied(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.got_reply.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def ask(self, text: str, timeout: float) -> int:
        """`--once`: one message, and its answer; the exit code tells an answer from "could not answer"."""
        if not text.strip():
            raise ControlError("--once needs a message to send")
        until = time.monotonic() + timeout  # a Clawden away when it is sent counts against the wait too
        try:
            if not await asyncio.wait_for(self.send(text), timeout):
                return 2
        except TimeoutError:
            return 2  # `send` said it was not sent
        if not await self.replied(until - time.monotonic()):
            print(f"(no reply within {timeout:.0f}s)", file=sys.stderr)
            return 1
        return 1 if self.failed else 0

    async def talk(self, stdin: TextIO) -> int:
        """A person at the terminal, until Ctrl-D or /exit."""
        print(
            f"Talking to Clawden as {self.terminal.user} (Ctrl-D or /exit to leave, /help for more).",
            file=self.stdout,
            flush=True,
        )
        keyboard = self.keyboard = Reader(asyncio.get_running_loop(), stdin, interactive=True)
        with terminal_kept(stdin, self.stdout):
            keyboard.start()
            try:
                while (text := await keyboard.texts.get()) is not None:
                    if not await self.handle(text):
                        break
                    keyboard.ready.set()
            except asyncio.CancelledError:  # Ctrl-C: the shell's prompt goes on a line of its own, not after ours
                if keyboard.prompting:
                    print(file=self.stdout, flush=True)
                raise
        return 0

    async def pipe(self, stdin: TextIO, *, line_by_line: bool, timeout: float) -> int:
        """Piped input, as paragraphs or lines; then the last reply is given a moment before leaving."""
        pipe, paragraphs = (
            Reader(asyncio.get_running_loop(), stdin, interactive=False),
            Paragraphs(line_by_line=line_by_line),
        )
        pipe.start()
        while True:
            line = await pipe.texts.get()
            for text in paragraphs.feed(line):
                if not await self.handle(text):
                    line = None
                    break
            if line is None:
                break
            pipe.ready.set()
        return 0 if await self.replied(timeout) else 1


async def router_answers(cfg: Config, nc: Client, link: Link) -> None:
    """The router reads what is typed here and hands it to an agent: without it a message would wait, unanswered,
    for as long as the chat lasts. ControlError, in one line with what to run, when nothing listens for it. A router
    that listens and is slow to answer (a busy machine) is running: the chat goes on, and says so. A ping lost with
    Clawden (`clawden up` restarted as the chat began) is no word on the router: the link says Clawden went, and the
    router is asked again once it is back."""
    while True:
        await link.up.wait()
        losses = link.losses
        try:
            await ask_on(nc, PING.at("router"), Nothing(), timeout=ROUTER_WAIT, wait_for_service=True)
            return
        except NoAnswer as exc:
            if link.went_since(losses):
                continue
            if isinstance(exc, NotListening):
                raise ControlError(
                    f"the router is not running, so nothing would answer here: {start_hint(cfg, 'clawden-router')}"
                    " (`clawden status` shows what runs)"
                ) from None
            print("(the router is slow to answer; messages wait for it)", file=sys.stderr)
            return


async def near_miss(nc: Client, chat_id: str) -> str:
    """The chat that `--chat NAME` was likely meant to name, when NAME names none yet but one is close (a typo);
    "" otherwise, and when the router cannot say at once: a new chat is what was asked for, so this only warns."""
    try:
        chats = await ask_on(nc, CHATS_LIST, ChatList(channel=CHANNEL), timeout=CHATS_WAIT)
    except ControlError:
        return ""
    known = {DEFAULT_CHAT, *(c.chat_id for c in chats if c.channel == CHANNEL and c.chat_id != "*")}
    if chat_id in known:
        return ""
    close = difflib.get_close_matches(chat_id, sorted(known), n=1)
    return close[0] if close else ""


async def open_replies(js: JetStreamContext, link: Link, chat_id: str) -> Puller:
    """The streams and this terminal's durable, set up, and a pull on it. A Clawden that goes away meanwhile (`clawden
    up` restarted just as the chat began) is waited for and the set-up done again: it creates or updates, so twice is
    as once. A failure while Clawden is there ends the chat in one line."""
    while True:
        await link.up.wait()
        losses = link.losses
        try:
            await ensure_streams(js)
            return await bind(js, terminal_outbound(chat_id))
        except (nats.errors.Error, TimeoutError) as exc:
            if not link.went_since(losses):
                why = exc.description if isinstance(exc, APIError) and exc.description else type(exc).__name__
                raise ControlError(
                    f"Clawden did not set up this chat's replies ({why}); `clawden status` shows whether it runs well"
                ) from None


async def leave(nc: Client) -> None:
    """Drain (the last acks go out); a client still waiting for Clawden to come back has nothing to drain."""
    try:
        await nc.drain()
    except nats.errors.Error:
        await nc.close()


async def chat(
    cfg: Config,
    *,
    chat_id: str = DEFAULT_CHAT,
    once: str | None = None,
    timeout: float = 300.0,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    line_by_line: bool = False,
) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        subjects.token(chat_id)
    except ValueError:
        raise ControlError(f"--chat {chat_id!r}: a chat name is one word of letters, digits, '-' and '_'") from None
    # The owner's terminal: the CLI identity (a bridge's identity could not make a durable per terminal).
    link = Link()
    try:
        nc = await connect_cli(cfg, timeout=10, reconnects=-1, first_tries=FIRST_TRIES, watcher=link)
    except Unreachable as exc:
        raise ControlError(f"{exc}\n  fix: {exc.fix}") from None
    interactive = once is None and stdin is sys.stdin and stdin.isatty()
    js = nc.jetstream()
    talk = Conversation(
        js,
        link,
        TerminalChat(chat_id, getpass.getuser(), once=once is not None),
        stdout,
        interactive=interactive,
        once=once is not None,
    )
    try:
        await router_answers(cfg, nc, link)
        if chat_id != DEFAULT_CHAT and (meant := await near_miss(nc, chat_id)):
            print(f"no chat {chat_id} yet; did you mean {meant}? (starting a new chat {chat_id})", file=sys.stderr)
        sub = await open_replies(js, link, chat_id)
    except ControlError:
        await nc.close()
        raise
    receiver = asyncio.create_task(consume(sub, ev.OUTBOUND_DECODER, talk.on_outbound, stopping=talk.stopping))
    try:
        if once is not None:
            return await talk.ask(once, timeout)
        if interactive:
            return await talk.talk(stdin)
        return await talk.pipe(stdin, line_by_line=line_by_line, timeout=timeout)
    finally:
        talk.stopping.set()
        # A reply's receipt waiting for Clawden to come back is given up: the reply comes again next time.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver, 5)
        await leave(nc)
