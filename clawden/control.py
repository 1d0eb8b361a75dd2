"""Calling a service's control endpoints (`clawden.ctl.<service>.<verb>`) from the CLI or a test."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from clawden.bus import subjects
from clawden.config import Config


class ControlError(Exception):
    """The service refused the request, or did not answer; the message is for a person."""


async def call(cfg: Config, service: str, verb: str, payload: dict[str, Any] | None = None,
               timeout: float = 10.0) -> Any:
    from clawden.status import Unreachable, connect_cli

    try:
        nc = await connect_cli(cfg, timeout)
    except Unreachable as exc:
        raise ControlError(f"{exc}\n  fix: {exc.fix}") from None
    try:
        try:
            reply = await nc.request(subjects.ctl(service, verb), json.dumps(payload or {}).encode(),
                                     timeout=timeout)
        except Exception as exc:
            raise ControlError(f"the {service} service did not answer ({type(exc).__name__})") from exc
        headers = reply.headers or {}
        if "Nats-Service-Error" in headers:
            raise ControlError(headers["Nats-Service-Error"])
        return json.loads(reply.data)
    finally:
        await nc.close()


def run(cfg: Config, service: str, verb: str, payload: dict[str, Any] | None = None) -> Any:
    """Synchronous wrapper for argparse handlers."""
    return asyncio.run(call(cfg, service, verb, payload))
