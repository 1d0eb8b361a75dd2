"""The `clawden` command: init, up, chat, run a service, build the image; the rest in `clawden.commands`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from pathlib import Path

from clawden import config as config_mod
from clawden.control import ControlError


def _home(args: argparse.Namespace) -> Path | None:
    return Path(args.home).expanduser() if args.home else None


def cmd_init(args: argparse.Namespace) -> int:
    from clawden.setup import init

    cfg = init(_home(args))
    print(f"Clawden home: {cfg.home}")
    print(f"  config:      {cfg.path('config.toml')}")
    print(f"  agent group: {cfg.groups_dir / 'main'} (edit its CLAUDE.md to shape the assistant)")
    if cfg.embedded_nats:
        from clawden import natsauth

        count = len(list(natsauth.seed_dir(cfg).glob("*.nk")))
        print(f"  NATS:        {natsauth.conf_path(cfg)} ({count} identities, seeds in {natsauth.seed_dir(cfg)});"
              " a running server reads changes on reload")
    key_file = cfg.keys_dir / "anthropic"
    if not key_file.exists() and sys.stdin.isatty():
        key = getpass.getpass("  Anthropic API key (kept by the vault only; Enter to skip): ").strip()
        if key:
            key_file.touch(mode=0o600)
            key_file.write_text(key + "\n")
    if key_file.exists():
        print(f"  model key:   {key_file} (the vault makes it its `anthropic` secret)")
    else:
        print(f"  model key:   put your Anthropic API key in {key_file} (mode 0600)"
              " or export ANTHROPIC_API_KEY before `clawden up`")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from clawden import runtime

    return runtime.run(args.service, args.home)


def cmd_up(args: argparse.Namespace) -> int:
    from clawden.supervisor import up

    return up(_home(args), services=args.service or None)


def cmd_chat(args: argparse.Namespace) -> int:
    from clawden.chat import chat

    return asyncio.run(chat(config_mod.load(_home(args)), chat_id=args.chat, once=args.once,
                            timeout=args.timeout))


def cmd_image_build(args: argparse.Namespace) -> int:
    from clawden.image import build_agent_image

    tag = build_agent_image(args.tag, args.base, force_base=args.force_base)
    print(f"built {tag}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clawden", description=__doc__)
    p.add_argument("--home", help="Clawden home (default: $CLAWDEN_HOME or ~/.clawden)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("init", help="create the home, config and the default agent group").set_defaults(
        func=cmd_init)

    run = sub.add_parser("run", help="run one service in the foreground (what a systemd unit runs)")
    run.add_argument("service", help="router, runner, vault, or channel@<platform>")
    run.set_defaults(func=cmd_run)

    up = sub.add_parser("up", help="run NATS and every service in the foreground (Ctrl-C stops)")
    up.add_argument("--service", action="append", help="only these services (repeatable)")
    up.set_defaults(func=cmd_up)

    chat = sub.add_parser("chat", help="talk to your assistant from this terminal")
    chat.add_argument("--chat", default="terminal", help="which terminal chat (default: terminal)")
    chat.add_argument("--once", help="send this one message, print the reply, exit")
    chat.add_argument("--timeout", type=float, default=300.0, help="with --once: seconds to wait")
    chat.set_defaults(func=cmd_chat)

    image = sub.add_parser("image", help="the agent container image")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build clawden-agent (bootstraps a base when none pulls)")
    build.add_argument("--tag", default="clawden-agent:latest")
    build.add_argument("--base", default=None, help="base image (default: a slim Debian Python image)")
    build.add_argument("--force-base", action="store_true", help="re-bootstrap the Debian base image")
    build.set_defaults(func=cmd_image_build)

    from clawden.commands import register_all

    register_all(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command not in ("run", "up"):
        # A command says in one line when NATS is away; the client's per-attempt warnings are noise.
        logging.getLogger("clawden.bus").setLevel(logging.ERROR)
    try:
        code: int = args.func(args)
    except config_mod.ConfigError as exc:
        print(f"clawden: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ControlError as exc:
        print(f"clawden: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
