"""Whether a bridge reaches its platform, said in a person's words: the line its ping carries as `trouble`, which
`clawden status` shows under a bridge it calls degraded instead of up."""

from __future__ import annotations

import errno
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from services.channels.retry import PlatformError

# Where the platform answers again, what waited goes through: replies wait in their lanes (an outage is waited out,
# `RetryPolicy.gives_up`), and what people wrote waits on the platform for the listener.
WAITING = "messages wait and go through once it answers"


@dataclass(frozen=True)
class Trouble:
    """What keeps a bridge from its platform: `<problem> since <when> (<why>); <outcome>`, each part in a person's
    words; `problem` is "cannot reach <platform>" and `outcome` WAITING where a bridge does not say otherwise."""

    why: str = ""
    problem: str = ""
    outcome: str = ""


class Reach:
    """The bridge's trouble reaching its platform, told to `say` (the service's `set_trouble`) as it changes.

    `failed` on a failure signal, `reached` on the success that ends it (the listener heard from the platform):
    never a timer. A bare `failed()` (a listener that paused again without news) keeps the words a bridge gave."""

    def __init__(
        self, platform: str, say: Callable[[str], None] | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.platform = platform
        self.say = say or (lambda _line: None)
        self.clock = clock
        self.since: float | None = None  # wall clock of the first failure since the platform last answered
        self.trouble = Trouble()

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, trouble: Trouble | None = None) -> None:
        now = self.clock()
        if self.since is None:
            self.since = now
        if trouble is not None:
            self.trouble = trouble
        self.say(line(self.platform, self.trouble, self.since, now))

    def reached(self) -> None:
        if self.since is None:
            return
        self.since, self.trouble = None, Trouble()
        self.say("")


def line(platform: str, trouble: Trouble, since: float, now: float) -> str:
    """ "cannot reach Telegram since 21:14 (connection refused); messages wait and go through once it answers"."""
    problem = trouble.problem or f"cannot reach {platform}"
    why = f" ({trouble.why})" if trouble.why else ""
    return f"{problem} since {when(since, now)}{why}; {trouble.outcome or WAITING}"


def when(at: float, now: float) -> str:
    """The local time of day, with the date once it is not today's."""
    then = time.localtime(at)
    return time.strftime("%H:%M" if then[:3] == time.localtime(now)[:3] else "%b %d %H:%M", then)


def why_unreachable(exc: BaseException) -> str:
    """What a failed connection comes to in a person's words ("connection refused"), read from the operating
    system's error under the client library's own ones; a platform's own description where there is none."""
    for cause in _chain(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "its name does not resolve: no network, or no DNS"
        if isinstance(cause, ssl.SSLError):
            detail = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or cause
            return f"the secure connection failed ({detail})"
        if isinstance(cause, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return "the connection was cut"
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "no route to it: is the network up?"
        if isinstance(cause, TimeoutError) or type(cause).__name__.endswith("Timeout"):
            return "no answer in time"
    if isinstance(exc, PlatformError):
        if exc.connection:
            return "no connection" if exc.kind == "transient" else "its answers are lost on the way"
        return exc.description
    return str(exc) or type(exc).__name__


def call_trouble(platform: str, exc: PlatformError, fix: str) -> Trouble:
    """A listener's failed call to its platform in a person's words: the connection (`why_unreachable`), credentials
    it refuses (401/403, which only the owner can mend: `fix` says how), being held back, or its own answer."""
    if exc.connection:
        return Trouble(why_unreachable(exc))
    if exc.code in (401, 403):
        return Trouble(
            exc.description,
            problem=f"{platform} refuses the bridge's credentials",
            outcome=f"nothing comes in or goes out until they are mended: {fix}",
        )
    if exc.kind == "rate_limited":
        wait = f" {exc.retry_after:.0f}s" if exc.retry_after is not None else ""
        return Trouble(f"it asks the bridge to wait{wait}", problem=f"{platform} is holding the bridge back")
    return Trouble(f"it answers {exc.description}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and those it came from, outermost first: a client library's "from None" only hides its cause
    from tracebacks (`__context__` still holds it)."""
    seen: set[int] = set()
    at: BaseException | None = exc
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        yield at
        at = at.__cause__ or at.__context__
