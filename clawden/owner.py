"""The owner's connection to the bus (the CLI identity: `clawden` commands, `clawden chat`, the control
client), and what to do when it cannot be made, said in plain words."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.errors import AuthorizationError, NoServersError
from nats.errors import Error as NatsError

from clawden import config as config_mod
from clawden import natsauth
from clawden.bus.connection import Watcher
from clawden.installed import start_hint


class Unreachable(ConnectionError):
    """NATS is down, or refuses the owner's CLI identity: `str()` says which, `fix` what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


async def connect_cli(
    cfg: config_mod.Config,
    timeout: float = 5.0,
    reconnects: int = 1,
    watcher: Watcher | None = None,
    first_tries: int = 0,
) -> Client:
    """The owner's CLI connection, or `Unreachable` in plain words. `watcher` is told when it is lost and back.
    `reconnects` is nats-py's limit on tries, for the first connect and each reconnect (-1: none); `first_tries`
    bounds the first connect alone, for a connection that reconnects without limit once made (`clawden chat`)."""
    connecting = natsauth.connect_as(
        cfg, natsauth.CLI, max_reconnect_attempts=reconnects, first_tries=first_tries, watcher=watcher
    )
    try:
        return await asyncio.wait_for(connecting, timeout)
    except natsauth.IdentityError as exc:
        raise Unreachable(str(exc), f"chmod 600 {natsauth.seed_path(cfg, natsauth.CLI)}") from None
    except AuthorizationError:
        if other := another_server(cfg):
            raise Unreachable(
                other,
                f"stop that one, or give this install its own port: [nats] port in "
                f"{cfg.path('config.toml')}, then `clawden init` and `clawden up`",
            ) from None
        seed = natsauth.seed_path(cfg, natsauth.CLI)
        why = "with the seed in " + str(seed) if seed.exists() else f"without a seed ({seed} is missing)"
        raise Unreachable(
            f"NATS at {cfg.nats_url} refused the owner's CLI identity {why}",
            "run `clawden init` (it writes the seeds and nats.conf), then restart NATS "
            "(`systemctl --user restart clawden-nats`, or restart `clawden up`)",
        ) from None
    except (NoServersError, OSError, TimeoutError, NatsError) as exc:
        raise Unreachable(f"cannot reach NATS at {cfg.nats_url} ({type(exc).__name__})", start_hint(cfg)) from None


def another_server(cfg: config_mod.Config) -> str | None:
    """When the embedded server's port is held by a NATS server that is not this install's, says whose."""
    from clawden import natsserver

    if not cfg.embedded_nats:
        return None
    name = natsserver.announced_name(cfg.nats.port)
    if name is None or name in (natsauth.server_name(cfg), "clawden"):  # "clawden": a server from before names
        return None
    if name.startswith("clawden-"):
        return (
            f"port {cfg.nats.port} belongs to another Clawden install (install id {name.removeprefix('clawden-')};"
            f" this home {cfg.home} is {cfg.install_id})"
        )
    return f"port {cfg.nats.port} is held by a NATS server that is not this install's ({name or 'unnamed'})"
