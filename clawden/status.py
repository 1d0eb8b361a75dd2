"""`clawden status`: every Clawden service instance that answers on the bus, via NATS micro discovery."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.msg import Msg

from clawden import config as config_mod
from clawden import natsauth
from clawden.bus import subjects


async def status(cfg: config_mod.Config, wait: float = 0.5) -> dict[str, Any]:
    nc = await asyncio.wait_for(natsauth.connect_as(cfg, natsauth.CLI, max_reconnect_attempts=1), 5)
    try:
        found: list[dict[str, Any]] = []
        inbox = nc.new_inbox()
        replies: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await nc.subscribe(inbox, cb=replies.put)
        await nc.publish("$SRV.PING", b"", reply=inbox)
        await asyncio.sleep(wait)
        await sub.unsubscribe()
        while not replies.empty():
            ping = json.loads((await replies.get()).data)
            name = str(ping.get("name", ""))
            if not name.startswith("clawden-"):
                continue
            service = name.removeprefix("clawden-")
            try:
                reply = await nc.request(subjects.ctl(service, "ping"), b"", timeout=2)
                found.append(json.loads(reply.data) | {"name": service})
            except Exception as exc:
                found.append({"name": service, "error": str(exc)})
        return {"nats": cfg.nats_url, "services": sorted(found, key=lambda s: s["name"])}
    finally:
        await nc.close()
