"""Asking a service's control verbs (`clawden.ctl.<service>.<verb>`, declared in `clawden.bus.ctl`): from the
CLI or a test with `ask`/`run`, from a service over its own connection with `ask_on`."""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError

from clawden.bus.ctl import Verb
from clawden.config import Config

NO_RESPONDERS_RETRY = 0.2  # seconds

Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


class ControlError(Exception):
    """The service refused the request, or did not answer; the message is for a person."""


class NoBus(ControlError):
    """NATS itself could not be reached (or refused the CLI): no service can be asked anything."""


class NoAnswer(ControlError):
    """Nobody answered: the service is down or still starting, or the request timed out."""


class Refused(ControlError):
    """The service answered with an error: `code` "400" for the caller's mistake, "500" for its own."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def ask(cfg: Config, verb: Verb[Req, Rep], request: Req, timeout: float = 10.0) -> Rep:
    """Ask as the CLI: connect, ask (again while nobody listens yet, until `timeout`), close."""
    from clawden.owner import Unreachable, connect_cli

    try:
        nc = await connect_cli(cfg, timeout)
    except Unreachable as exc:
        raise NoBus(f"{exc}\n  fix: {exc.fix}") from None
    try:
        return await ask_on(nc, verb, request, timeout=timeout, wait_for_service=True)
    finally:
        await nc.close()


def run(cfg: Config, verb: Verb[Req, Rep], request: Req, timeout: float = 10.0) -> Rep:
    """`ask` for argparse handlers."""
    return asyncio.run(ask(cfg, verb, request, timeout))


async def ask_on(
    nc: Client, verb: Verb[Req, Rep], request: Req, *, timeout: float = 10.0, wait_for_service: bool = False
) -> Rep:
    """Ask over a connection the caller owns (a service asking a service). With `wait_for_service`, a service
    nobody listens for yet is asked again until `timeout`; without, that is a NoAnswer at once."""
    if not isinstance(request, verb.request):
        raise TypeError(f"{verb.label} takes a {verb.request.__name__}, not a {type(request).__name__}")
    service, subject = verb.service, verb.subject
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = await nc.request(
                subject, msgspec.json.encode(request), timeout=max(0.1, deadline - time.monotonic())
            )
            break
        except NoRespondersError as exc:
            # Nobody listens yet: the service is down, or still starting (its endpoints come up one by
            # one); ask again until the time is up rather than fail a just-started one.
            if not wait_for_service or time.monotonic() + NO_RESPONDERS_RETRY >= deadline:
                raise NoAnswer(
                    f"the {service} service did not answer (it is not running, or not this far into its start)"
                ) from exc
            await asyncio.sleep(NO_RESPONDERS_RETRY)
        except Exception as exc:
            raise NoAnswer(f"the {service} service did not answer ({type(exc).__name__})") from exc
    headers = reply.headers or {}
    if "Nats-Service-Error" in headers:
        raise Refused(headers.get("Nats-Service-Error-Code", ""), headers["Nats-Service-Error"])
    try:
        return msgspec.json.decode(reply.data, type=verb.reply)
    except msgspec.DecodeError as exc:  # ValidationError included: a service and a client of different ages
        raise ControlError(
            f"the {service} service answered {verb.label} in a shape this client does not know: {exc}"
        ) from None
