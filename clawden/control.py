"""Calling a service's control endpoints (`clawden.ctl.<service>.<verb>`) from the CLI or a test."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from nats.errors import NoRespondersError

from clawden.bus import subjects
from clawden.config import Config

NO_RESPONDERS_RETRY = 0.2  # seconds


class ControlError(Exception):
    """The service refused the request, or did not answer; the message is for a person."""


class NoBus(ControlError):
    """NATS itself could not be reached (or refused the CLI): no service can be asked anything."""


async def call(
    cfg: Config, service: str, verb: str, payload: dict[str, Any] | None = None, timeout: float = 10.0
) -> Any:
    from clawden.status import Unreachable, connect_cli

    try:
        nc = await connect_cli(cfg, timeout)
    except Unreachable as exc:
        raise NoBus(f"{exc}\n  fix: {exc.fix}") from None
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                reply = await nc.request(
                    subjects.ctl(service, verb),
                    json.dumps(payload or {}).encode(),
                    timeout=max(0.1, deadline - time.monotonic()),
                )
                break
            except NoRespondersError as exc:
                # Nobody listens yet: the service is down, or still starting (its endpoints come up
                # one by one); ask again until the time is up rather than fail a just-started one.
                if time.monotonic() + NO_RESPONDERS_RETRY >= deadline:
                    raise ControlError(
                        f"the {service} service did not answer (it is not running, or not this far into its start)"
                    ) from exc
                await asyncio.sleep(NO_RESPONDERS_RETRY)
            except Exception as exc:
                raise ControlError(f"the {service} service did not answer ({type(exc).__name__})") from exc
        headers = reply.headers or {}
        if "Nats-Service-Error" in headers:
            raise ControlError(headers["Nats-Service-Error"])
        return json.loads(reply.data)
    finally:
        await nc.close()


def run(cfg: Config, service: str, verb: str, payload: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Synchronous wrapper for argparse handlers."""
    return asyncio.run(call(cfg, service, verb, payload, timeout))
