"""What a bridge says when it cannot reach its platform: the line, when it is said, and when it ends."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time

import pytest

from clawden.natsserver import free_port
from services.channels.reach import WAITING, Reach, Trouble, call_trouble, line, when, why_unreachable
from services.channels.retry import PlatformError
from services.channels.telegram import BotAPI, TelegramError, poll_trouble


def at(hour: int, minute: int, day: int = 3) -> float:
    return time.mktime((2025, 3, day, hour, minute, 0, 0, 0, -1))


def test_the_line_says_what_since_when_why_and_what_happens_meanwhile() -> None:
    assert line("Telegram", Trouble("connection refused"), at(21, 14), at(21, 20)) == (
        f"cannot reach Telegram since 21:14 (connection refused); {WAITING}"
    )
    assert line("Slack", Trouble(), at(9, 5), at(9, 6)) == f"cannot reach Slack since 09:05; {WAITING}"
    refused = Trouble("another process polls this bot", problem="Telegram refuses polling", outcome="run one")
    assert line("Telegram", refused, at(8, 0), at(8, 1)) == (
        "Telegram refuses polling since 08:00 (another process polls this bot); run one"
    )


def test_an_outage_from_another_day_names_its_day() -> None:
    assert when(at(23, 50, day=2), at(0, 10, day=3)) == "Mar 02 23:50"
    assert when(at(0, 5), at(0, 10)) == "00:05"


def test_the_first_failure_sets_the_time_and_the_success_after_it_clears_the_line() -> None:
    said: list[str] = []
    now = [at(21, 14)]
    reach = Reach("Telegram", said.append, clock=lambda: now[0])

    reach.reached()  # nothing to end: nothing said
    reach.failed(Trouble("connection refused"))
    now[0] = at(21, 40)
    reach.failed()  # a bare signal keeps the bridge's own words, and the time it started
    reach.reached()
    reach.reached()

    line_ = f"cannot reach Telegram since 21:14 (connection refused); {WAITING}"
    assert said == [line_, line_, ""]
    assert not reach.failing


@pytest.mark.parametrize(
    ("cause", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed"), "connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "its name does not resolve: no network, or no DNS"),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), "the secure connection failed"),
        (ConnectionResetError(104, "reset"), "the connection was cut"),
        (OSError(101, "Network is unreachable"), "no route to it: is the network up?"),
        (TimeoutError(), "no answer in time"),
    ],
)
def test_the_operating_systems_error_under_a_platforms_says_why(cause: BaseException, words: str) -> None:
    try:
        try:
            raise cause
        except OSError:
            raise PlatformError("cannot reach Example (ConnectError)", "transient", connection=True) from None
    except PlatformError as exc:
        assert why_unreachable(exc).startswith(words)


def test_without_an_operating_systems_error_the_platforms_words_are_kept() -> None:
    assert why_unreachable(PlatformError("x", "transient", connection=True)) == "no connection"
    assert why_unreachable(PlatformError("x", "unknown", connection=True)) == "its answers are lost on the way"
    assert why_unreachable(PlatformError("Bad Gateway", "transient", code=502)) == "Bad Gateway"
    assert why_unreachable(RuntimeError("boom")) == "boom"
    assert why_unreachable(RuntimeError()) == "RuntimeError"


async def test_a_telegram_that_refuses_connections_is_said_to_refuse_them() -> None:
    api = BotAPI(f"http://127.0.0.1:{free_port()}", "123:abc")
    try:
        with pytest.raises(TelegramError) as refused:
            await asyncio.wait_for(api.call("getUpdates"), 10)
    finally:
        await api.close()
    assert poll_trouble(refused.value) == Trouble("connection refused")


@pytest.mark.parametrize(
    ("error", "problem", "why"),
    [
        (TelegramError("Conflict: can't use getUpdates method while webhook is active", "transient", code=409),
         "Telegram refuses polling", "a webhook is set for this bot"),
        (TelegramError("Conflict: terminated by other getUpdates request", "transient", code=409),
         "Telegram refuses polling", "another process polls this bot"),
        (TelegramError("Unauthorized", "transient", code=401), "Telegram refuses the bot token", "401 Unauthorized"),
        (TelegramError("Too Many Requests", "rate_limited", code=429, retry_after=5),
         "Telegram is holding the bot back", "it asks the bot to wait 5s"),
        (TelegramError("Bad Gateway", "transient", code=502), "", "it answers 502 Bad Gateway"),
        (TelegramError("HTTP 503", "transient", code=503), "", "it answers HTTP 503"),
    ],
)  # fmt: skip
def test_a_poll_telegram_refuses_says_what_it_refuses(error: TelegramError, problem: str, why: str) -> None:
    trouble = poll_trouble(error)
    assert (trouble.problem, trouble.why) == (problem, why)


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (
            PlatformError("sync: M_UNKNOWN_TOKEN Invalid access token", "transient", code=401),
            "the Matrix homeserver refuses the bridge's credentials since 21:14 (sync: M_UNKNOWN_TOKEN Invalid access "
            "token); nothing comes in or goes out until they are mended: log in again",
        ),
        (
            PlatformError("sync: too many requests", "rate_limited", code=429, retry_after=12),
            "the Matrix homeserver is holding the bridge back since 21:14 (it asks the bridge to wait 12s); messages "
            "wait and go through once it answers",
        ),
        (
            PlatformError("sync: cannot reach the homeserver", "transient", connection=True),
            "cannot reach the Matrix homeserver since 21:14 (no connection); messages wait and go through once it "
            "answers",
        ),
        (
            PlatformError("sync: M_UNKNOWN bad request", "permanent", code=400),
            "cannot reach the Matrix homeserver since 21:14 (it answers sync: M_UNKNOWN bad request); messages wait "
            "and go through once it answers",
        ),
    ],
)
def test_a_listeners_failed_call_is_said_in_the_platforms_terms(exc: PlatformError, said: str) -> None:
    at = time.mktime((2026, 12, 6, 21, 14, 0, 0, 0, -1))
    platform = "the Matrix homeserver"
    assert line(platform, call_trouble(platform, exc, "log in again"), at, at + 60) == said
