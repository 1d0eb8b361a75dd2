"""The `clawden` command: init, up, chat, run a service, build the image; the rest in `clawden.cli.commands`."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import getpass
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from clawden import config as config_mod
from clawden.control import ControlError

DESCRIPTION = """\
Clawden: your personal AI assistant on your own server. Every chat is answered by a Claude agent in
its own container, which never sees your API keys.

Start here: `clawden init` (home and model key), `clawden up` (run it), `clawden chat` (talk to it);
`clawden doctor` checks the install."""


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
        print(
            f"  NATS:        {natsauth.conf_path(cfg)} ({count} identities, seeds in {natsauth.seed_dir(cfg)});"
            " a running server reads changes on reload"
        )
    key_file = cfg.keys_dir / "anthropic"
    if not key_file.exists() and sys.stdin.isatty():
        key = getpass.getpass("  Anthropic API key (kept by the vault only; Enter to skip): ").strip()
        if key:
            key_file.touch(mode=0o600)
            key_file.write_text(key + "\n")
    where = f"--home {cfg.home} " if args.home else ""
    if key_file.exists():
        imported = "the vault imports it as its `anthropic` secret when it is new or changed"
        print(f"  model key:   {key_file} ({imported}; `clawden secrets` changes it from then on){_tell_vault(cfg)}")
        print(f"next: `clawden {where}up` (it stays in the foreground), then `clawden {where}chat` in another terminal")
    else:
        print(
            f"  model key:   none in {key_file}: put your Anthropic API key there (chmod 600) and run this again,"
            " or give it to the vault once it runs: `clawden secrets add anthropic --type anthropic`"
            " (nothing to do if the vault holds one already: `clawden secrets list` shows it)"
        )
        print(f"next: `clawden {where}up`, give it the key as above, then `clawden {where}chat` in another terminal")
    return 0


def _tell_vault(cfg: config_mod.Config) -> str:
    """A running vault reads the key file again at once (no restart); a stopped one reads it when it starts."""
    from clawden import control
    from clawden.bus.ctl import Nothing, vault

    logging.getLogger("clawden.bus").setLevel(logging.CRITICAL)
    try:
        answer = control.run(cfg, vault.MODEL_KEY, Nothing(), timeout=2.0)
    except ControlError:
        return ""
    return "; the running vault has it" if answer.present else ""


def cmd_run(args: argparse.Namespace) -> int:
    from clawden import runtime

    return runtime.run(args.service, args.home)


def cmd_up(args: argparse.Namespace) -> int:
    from clawden.registry import installed_channels
    from clawden.runtime import SERVICES
    from clawden.supervisor import up

    known = [*SERVICES, *(f"channel@{name}" for name in installed_channels())]
    if unknown := [s for s in args.service or [] if s not in known]:
        raise ControlError(f"no service {', '.join(unknown)}; the services are: {', '.join(known)}")
    return up(_home(args), services=args.service or None)


def cmd_chat(args: argparse.Namespace) -> int:
    from clawden.chat import chat

    return asyncio.run(
        chat(
            config_mod.load(_home(args)),
            chat_id=args.chat,
            once=args.once,
            timeout=args.timeout,
            line_by_line=args.lines,
        )
    )


def cmd_image_build(args: argparse.Namespace) -> int:
    from clawden.cli.image import build_agent_image

    tag = build_agent_image(args.tag, args.base, force_base=args.force_base)
    print(f"built {tag}")
    return 0


HOME_HELP = "Clawden home (default: $CLAWDEN_HOME or ~/.clawden)"
# What `clawden run` and `up --service` take besides the bridges (`clawden.runtime.SERVICES`, whose imports the
# help should not pay for; tests/ops/test_cli_help.py checks the two agree).
SERVICE_NAMES = "router, runner, vault, scheduler, approvals, webhooks, web"


class Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is said in two lines (what is wrong, where the help is) instead of
    the whole usage block above it, by the subcommand given it; subcommands' parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", Subcommands)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}\n  see `{self.prog} --help`\n")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """A choice not among them names the nearest, if one is near (`clawden stauts`: did you mean `clawden
        status`?), instead of the whole list, which is all argparse gives."""
        if action.choices is None or value in action.choices or not isinstance(value, str):
            super()._check_value(action, value)
            return
        near = difflib.get_close_matches(value, [str(c) for c in action.choices], n=1, cutoff=0.6)
        if not near:
            super()._check_value(action, value)
            return
        guess = f"`{self.prog} {near[0]}`" if isinstance(action, Subcommands) else repr(near[0])
        raise argparse.ArgumentError(action, f"invalid choice: {value!r}: did you mean {guess}?")


if TYPE_CHECKING:
    _SubParsersAction = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsersAction = argparse._SubParsersAction  # not subscriptable at run time


class Subcommands(_SubParsersAction):
    """Arguments the chosen subcommand does not take are refused by that subcommand's parser. argparse hands them
    up to the top parser, whose error would point at `clawden --help` for `clawden secrets add x --bogus`."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        # Where argparse leaves what the subcommand's parser did not take, for the parser above it to report.
        extras = vars(namespace).pop(argparse._UNRECOGNIZED_ARGS_ATTR, None)
        if extras and values:
            self.choices[values[0]].error(f"unrecognized arguments: {' '.join(extras)}")


def _version() -> str:
    try:
        return importlib.metadata.version("clawden")
    except importlib.metadata.PackageNotFoundError:
        from clawden.runtime import VERSION

        return VERSION


def parser() -> Parser:
    p = Parser(prog="clawden", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help=HOME_HELP)
    p.add_argument("--version", action="version", version=f"clawden {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("init", help="create the home, config and the default agent group").set_defaults(func=cmd_init)

    run = sub.add_parser("run", help="run one service in the foreground (what a systemd unit runs)")
    run.add_argument("service", help=f"{SERVICE_NAMES}, or channel@<platform> (telegram, slack, ...)")
    run.set_defaults(func=cmd_run)

    up = sub.add_parser("up", help="run NATS and every service in the foreground (Ctrl-C stops)")
    up.add_argument(
        "--service", action="append", help=f"only this one (repeatable): {SERVICE_NAMES}, or channel@<platform>"
    )
    up.set_defaults(func=cmd_up)

    chat = sub.add_parser("chat", help="talk to your assistant from this terminal")
    chat.add_argument("--chat", default="terminal", help="which terminal chat (default: terminal)")
    chat.add_argument("--once", help="send this one message, print the reply, exit")
    chat.add_argument("--timeout", type=float, default=300.0, help="with --once: seconds to wait")
    chat.add_argument(
        "--lines", action="store_true", help="piped input: a message per line (default: all of it is one message)"
    )
    chat.set_defaults(func=cmd_chat)

    image = sub.add_parser("image", help="the agent container image")
    image_sub = image.add_subparsers(dest="image_command", required=True)
    build = image_sub.add_parser("build", help="build clawden-agent (bootstraps a base when none pulls)")
    build.add_argument(
        "--tag",
        default="clawden-agent:latest",
        help="image tag to build (default clawden-agent:latest; a group's own image: its tag)",
    )
    build.add_argument("--base", default=None, help="base image (default: a slim Debian Python image)")
    build.add_argument("--force-base", action="store_true", help="re-bootstrap the Debian base image")
    build.set_defaults(func=cmd_image_build)

    from clawden.cli.commands import register_all

    register_all(cast("argparse._SubParsersAction[argparse.ArgumentParser]", sub))  # its parsers are Parsers
    _home_anywhere(p)
    return p


def _subparsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    return [
        child
        for action in p._actions
        if isinstance(action, argparse._SubParsersAction)
        for child in dict.fromkeys(action.choices.values())
    ]


def _home_anywhere(p: argparse.ArgumentParser) -> None:
    """`--home` is taken after the subcommand too (`clawden status --home H`); SUPPRESS keeps the value
    given before it when it is not repeated."""
    for child in _subparsers(p):
        if not any("--home" in a.option_strings for a in child._actions):
            child.add_argument("--home", default=argparse.SUPPRESS, help=HOME_HELP)
        _home_anywhere(child)


# Commands that make the home (or need none); every other one needs an existing home. `logs` reads the
# journal where units are installed, and checks the home itself before it reads files.
NO_HOME_NEEDED = {("init",), ("up",), ("run",), ("image",), ("units", "uninstall"), ("logs",)}


def _command_path(args: argparse.Namespace) -> tuple[str, ...]:
    verb = next((getattr(args, k) for k in vars(args) if k.endswith(("_command", "_verb")) and getattr(args, k)), None)
    return (args.command, verb) if verb else (args.command,)


def check_home(args: argparse.Namespace) -> str | None:
    """Why this command cannot use the home it is pointed at, in one line with the fix; None when it can."""
    path = _command_path(args)
    home = _home(args) or config_mod.default_home()
    given = bool(getattr(args, "home", None))
    if path[:1] in NO_HOME_NEEDED or path in NO_HOME_NEEDED:
        return config_mod.home_problem(home, given, missing_ok=True)
    return config_mod.home_problem(home, given)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`clawden status --json | head -1`): what it did not read is nobody's
        # concern. stdout is pointed at /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell shows for a command the pipe ended


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    if args.command not in ("run", "up"):
        # A command says in one line when NATS is away; the client's per-attempt warnings are noise.
        logging.getLogger("clawden.bus").setLevel(logging.ERROR)
    if problem := check_home(args):
        print(f"clawden: {problem}", file=sys.stderr)
        return 2
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # inside the try: a closed pipe is found here, not at the interpreter's exit
    except config_mod.ConfigError as exc:
        print(f"clawden: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ControlError as exc:
        print(f"clawden: {exc}", file=sys.stderr)
        return 1
    except (FileExistsError, NotADirectoryError) as exc:  # a file where the home needs a folder
        print(
            f"clawden: {exc.filename or 'a file'} is in the way: Clawden needs a folder there; move it aside",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
