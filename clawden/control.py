"""Asking a service's control verbs (`clawden.ctl.<service>.<verb>`, declared in `clawden.bus.ctl`): from the
CLI or a test with `ask`/`run`, from a service over its own connection with `ask_on`."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from clawden.bus import subjects
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


class NotListening(NoAnswer):
    """Nobody listens on the subject: the service is not running (or not this far into its start). Unlike a timeout,
    which a running service too slow to answer gives as well."""


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
    nc: Client,
    verb: Verb[Req, Rep],
    request: Req,
    *,
    timeout: float = 10.0,
    wait_for_service: bool = False,
    subject: str = "",
) -> Rep:
    """Ask over a connection the caller owns (a service asking a service). With `wait_for_service`, a service
    nobody listens for yet is asked again until `timeout`; without, that is a NoAnswer at once. `subject`: one
    instance's own subject for the verb (`ask_all`), instead of the one all instances share."""
    if not isinstance(request, verb.request):
        raise TypeError(f"{verb.label} takes a {verb.request.__name__}, not a {type(request).__name__}")
    service, subject = verb.service, subject or verb.subject
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
                raise NotListening(
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


# ---- every instance ----------------------------------------------------------------------------------------

DISCOVERY_WAIT = 1.0  # the most we wait for the first instance to answer $SRV.INFO
DISCOVERY_GRACE = 0.1  # after each answer: how long to wait for one more


def own_subjects(infos: list[dict[str, Any]], verb: Verb[Any, Any]) -> dict[str, str]:
    """Instance -> its own subject for `verb`, from the instances' `$SRV.INFO`: an endpoint at
    `clawden.ctl.<service>.<instance>.<verb>` (a runner's id). Anything else they announce is not it."""
    head = f"{subjects.PREFIX}.ctl.{verb.service}."
    found: dict[str, str] = {}
    for info in infos:
        for endpoint in info.get("endpoints") or []:
            subject = str(endpoint.get("subject", ""))
            middle, dot, name = subject.removeprefix(head).rpartition(".")
            if subject.startswith(head) and dot and name == verb.name and _is_token(middle):
                found[middle] = subject
    return dict(sorted(found.items()))


def _is_token(value: str) -> bool:
    try:
        subjects.token(value)
    except ValueError:
        return False
    return True


async def instances(nc: Client, service: str, wait: float = DISCOVERY_WAIT) -> list[dict[str, Any]]:
    """Every running instance of `service` as it describes itself (`$SRV.INFO.clawden-<service>`): all that
    answer within `wait`, gathering until none more came for DISCOVERY_GRACE."""
    replies: asyncio.Queue[Msg] = asyncio.Queue()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=replies.put)
    found: list[dict[str, Any]] = []
    try:
        await nc.publish(f"$SRV.INFO.clawden-{subjects.token(service)}", b"", reply=inbox)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(replies.get(), min(left, DISCOVERY_GRACE) if found else left)
            except TimeoutError:
                break
            try:
                found.append(json.loads(msg.data))
            except ValueError:
                continue
    finally:
        await sub.unsubscribe()
    return found


def run_all(cfg: Config, verb: Verb[Req, Rep], request: Req, timeout: float = 10.0) -> dict[str, Rep | ControlError]:
    """`ask_all` as the CLI, for argparse handlers: connect, ask every instance, close."""
    from clawden.owner import Unreachable, connect_cli

    async def go() -> dict[str, Rep | ControlError]:
        try:
            nc = await connect_cli(cfg, timeout)
        except Unreachable as exc:
            raise NoBus(f"{exc}\n  fix: {exc.fix}") from None
        try:
            return await ask_all(nc, verb, request, timeout=timeout)
        finally:
            await nc.close()

    return asyncio.run(go())


async def ask_all(
    nc: Client, verb: Verb[Req, Rep], request: Req, *, timeout: float = 10.0, wait: float = DISCOVERY_WAIT
) -> dict[str, Rep | ControlError]:
    """Ask every instance of the verb's service that answers it at its own subject (each runner), at once:
    instance -> its answer, or the ControlError it got (one that is down does not hide the others'). No
    instance with an own subject: the shared subject's one answer, as "" (a lone runner of an older version)."""
    own = own_subjects(await instances(nc, verb.service, wait), verb)
    if not own:
        own = {"": verb.subject}

    async def one(subject: str) -> Rep | ControlError:
        try:
            return await ask_on(nc, verb, request, timeout=timeout, subject=subject)
        except ControlError as exc:
            return exc

    answers = await asyncio.gather(*(one(subject) for subject in own.values()))
    return dict(zip(own, answers, strict=True))
