"""`clawden runners add|list|remove`: a NATS identity for each runner on another host.

A runner added here is `runner-<id>`: its seed is `keys/nats/runner-<id>.nk` (0600), and the server's
permissions (`natsauth.runner_grant`) let it read only its own wakes, receipts and decisions, beat only its
own heartbeat and serve only its own control subjects. The install's own runner keeps `runner`. The owner
copies that one seed to the runner's host; the runner there picks it by its `[runner] id`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from clawden import config as config_mod
from clawden import natsauth
from clawden.bus import subjects
from clawden.cli.commands._output import table
from clawden.control import ControlError
from clawden.installed import installed_scope
from clawden.registry import installed_channels

if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _cfg(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def check_new(runner_id: str, own: str, added: tuple[str, ...]) -> str | None:
    """Why `runner_id` cannot be added (None: it can)."""
    try:
        subjects.token(runner_id)
    except ValueError:
        return f"{runner_id!r} is no runner id: 1 to 64 letters, digits, '-' or '_' (it names NATS subjects)"
    if runner_id == own:
        return f"{runner_id!r} is this install's own runner ([runner] id): it has the identity `runner` already"
    if runner_id in added:
        return f"runner {runner_id!r} has an identity already (`clawden runners list`)"
    return None


def reload_hint(cfg: config_mod.Config) -> str:
    """How the NATS server(s) learn the new identity list."""
    if not cfg.embedded_nats:
        return (
            "then run `clawden cluster init` again with the same options (it keeps the CA and the route "
            "password), copy each node's nats.conf to its host and `systemctl reload clawden-nats-node` there"
        )
    scope = installed_scope(ask_systemctl=False)
    if scope == "user":
        return "reload NATS: systemctl --user reload clawden-nats"
    if scope == "system":
        return "reload NATS: sudo systemctl reload clawden-nats"
    return "reload NATS: restart `clawden up`"


def _rewrite(cfg: config_mod.Config) -> None:
    if cfg.embedded_nats:
        natsauth.write_server_config(cfg, tuple(installed_channels()))


def cmd_add(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    if problem := check_new(args.id, cfg.runner.id, natsauth.added_runners(cfg)):
        raise ControlError(problem)
    ident = natsauth.runner_identity(args.id)
    natsauth.ensure_seed(cfg, ident)
    _rewrite(cfg)
    seed = natsauth.seed_path(cfg, ident)
    print(f"runner {args.id}: identity {ident}, seed {seed} (0600)")
    print(f"  {reload_hint(cfg)}")
    print(f"  on that host: copy only {seed.name} to <its home>/keys/nats/{seed.name} (chmod 600),")
    print(f'  and set [runner] id = "{args.id}" in its config.toml; no other seed goes there')
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    rows = [[cfg.runner.id, natsauth.RUNNER, "this install's own"]]
    for rid in natsauth.added_runners(cfg):
        ident = natsauth.runner_identity(rid)
        rows.append([rid, ident, str(natsauth.seed_path(cfg, ident))])
    print(table(rows, ["RUNNER", "IDENTITY", "SEED"]))
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    if args.id not in natsauth.added_runners(cfg):
        raise ControlError(f"no added runner {args.id!r} (`clawden runners list`)")
    natsauth.seed_path(cfg, natsauth.runner_identity(args.id)).unlink()
    _rewrite(cfg)
    print(f"runner {args.id}: identity removed; once NATS reloads it is refused")
    print(f"  {reload_hint(cfg)}")
    return 0


def register(sub: Sub) -> None:
    runners = sub.add_parser("runners", help="NATS identities for runners on other hosts")
    runners_sub = runners.add_subparsers(dest="runners_command", required=True, metavar="COMMAND")
    add = runners_sub.add_parser("add", help="make the identity runner-<ID>, allowed only that runner's subjects")
    add.add_argument("id", help="the runner's [runner] id on its host")
    add.set_defaults(func=cmd_add)
    runners_sub.add_parser("list", help="every runner identity of this install").set_defaults(func=cmd_list)
    remove = runners_sub.add_parser("remove", help="delete an added runner's identity (its seed)")
    remove.add_argument("id")
    remove.set_defaults(func=cmd_remove)
