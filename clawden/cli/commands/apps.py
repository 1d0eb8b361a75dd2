"""`clawden apps connect|list|disconnect`: app connections (Google, GitHub) whose tokens the vault holds.

`connect` listens on a loopback port for the provider's redirect (RFC 8252), asks the vault for the
authorization URL (the vault keeps the PKCE verifier), opens it in a browser, and hands the code that
comes back to the vault, which exchanges it and keeps the tokens sealed. No token passes through here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import http.server
import os
import sys
import threading
import time
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from clawden import config as config_mod
from clawden import control
from clawden.bus.ctl import Nothing
from clawden.bus.ctl import vault as ctl
from clawden.cli.commands._output import table
from clawden.cli.commands.vault import grants_for

if TYPE_CHECKING:  # subscriptable only to the type checker
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]

SECRET_ENV = "CLAWDEN_APP_CLIENT_SECRET"
CONSOLES = {
    "google": "console.cloud.google.com → APIs & Services → Credentials → OAuth client ID (type: Desktop app)",
    "github": "github.com → Settings → Developer settings → OAuth Apps (callback URL http://127.0.0.1)",
}
DONE_PAGE = b"<!doctype html><title>Clawden</title><p>Done: go back to the terminal. You may close this tab.</p>"


def _cfg(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(Path(args.home).expanduser() if args.home else None)


def _when(at: float | None) -> str:
    return "-" if at is None else dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M")


class Callback:
    """The loopback listener the provider redirects the browser to; keeps the first answer for our state."""

    def __init__(self) -> None:
        self.state = ""
        self.answer: dict[str, str] | None = None
        self.arrived = threading.Event()
        callback = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                ours = bool(callback.state) and query.get("state") == callback.state and not callback.arrived.is_set()
                self.send_response(200 if ours else 400)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.end_headers()
                self.wfile.write(DONE_PAGE if ours else b"<p>Not an answer Clawden is waiting for.</p>")
                if ours:
                    callback.answer = query
                    callback.arrived.set()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def take_pasted(self, line: str) -> bool:
        """The address the browser was sent to, pasted by hand (the browser ran on another machine)."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(line.strip()).query).items()}
        if not self.state or query.get("state") != self.state or self.arrived.is_set():
            return False
        self.answer = query
        self.arrived.set()
        return True

    def read_pasted(self) -> None:
        """Lines from stdin until one is the answer (or stdin ends); runs beside the listener."""
        for line in sys.stdin:
            if self.take_pasted(line):
                return
            if line.strip():
                print("that is not the address the provider sent the browser to; paste it whole", file=sys.stderr)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/callback"

    def __enter__(self) -> Callback:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _client_secret(args: argparse.Namespace) -> str:
    """From a file, the environment, or a prompt: never from the command line, where `ps` shows it."""
    if args.client_secret_file:
        return Path(args.client_secret_file).expanduser().read_text().strip()
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].strip()
    if sys.stdin.isatty():
        return getpass.getpass(f"{args.provider} OAuth client secret (empty if it has none): ").strip()
    return ""


def cmd_connect(args: argparse.Namespace) -> int:
    if args.device:
        return _connect_device(args)
    cfg = _cfg(args)
    agents = grants_for(args, args.provider, args.provider)  # before the secret is asked for
    secret = _client_secret(args)
    with Callback() as callback:
        request = ctl.AppBegin(
            provider=args.provider,
            client_id=args.client_id,
            client_secret=secret,
            redirect_uri=callback.uri,
            scopes=args.scope or [],
            agents=agents,
        )
        begun = control.run(cfg, ctl.APPS_BEGIN, request)
        callback.state = begun.state
        print(f"Open this page and allow access (waiting for the answer on {callback.uri}):", flush=True)
        print(begun.authorize_url, flush=True)
        if args.paste or sys.stdin.isatty():
            print(
                "In a browser on another machine, the last page will not load: paste its address here.",
                flush=True,
            )
            threading.Thread(target=callback.read_pasted, daemon=True).start()
        if not args.no_browser:
            webbrowser.open(begun.authorize_url)
        # The owner's own pace in a browser: waiting is the point, nothing depends on the clock.
        arrived = callback.arrived.wait(timeout=max(1.0, begun.expires_at - time.time()))
    answer = callback.answer
    if not arrived or answer is None:
        print("no answer came back within 10 minutes; run the command again", file=sys.stderr)
        return 1
    if "code" not in answer:
        print(f"{args.provider} did not grant access: {answer.get('error', 'no code')}", file=sys.stderr)
        return 1
    info = control.run(cfg, ctl.APPS_FINISH, ctl.AppFinish(state=begun.state, code=answer["code"]))
    who = "every agent" if info.grants == ["*"] else ", ".join(info.grants)
    print(f"{info.provider} connected for {who} (scopes: {info.scopes}); the vault holds its tokens sealed")
    return 0


def _connect_device(args: argparse.Namespace) -> int:
    """RFC 8628: the owner types a code at the provider's page, on any device; the vault polls for the grant."""
    cfg = _cfg(args)
    agents = grants_for(args, args.provider, args.provider)  # before the secret is asked for
    request = ctl.AppDeviceBegin(
        provider=args.provider,
        client_id=args.client_id,
        client_secret=_client_secret(args),
        scopes=args.scope or [],
        agents=agents,
    )
    device = control.run(cfg, ctl.APPS_DEVICE_BEGIN, request)
    print(f"On any device, open {device.verification_uri} and enter the code {device.user_code}", flush=True)
    interval = device.interval
    while time.time() < device.expires_at:
        # The provider's own pace (RFC 8628 §3.5): polling sooner is refused with slow_down.
        time.sleep(interval)
        polled = control.run(cfg, ctl.APPS_DEVICE_POLL, ctl.AppPoll(state=device.state), timeout=30)
        if polled.done and polled.info is not None:
            who = "every agent" if polled.info.grants == ["*"] else ", ".join(polled.info.grants)
            print(f"{polled.info.provider} connected for {who} (scopes: {polled.info.scopes})")
            return 0
        interval = polled.interval or interval
    print("the code was not confirmed in time; run the command again", file=sys.stderr)
    return 1


def cmd_list(args: argparse.Namespace) -> int:
    apps = control.run(_cfg(args), ctl.APPS_LIST, Nothing()).apps
    if not apps:
        print("no apps connected: `clawden apps connect google|github --client-id ID`")
        return 0
    rows = [
        [a.provider, ", ".join(a.grants), a.scopes, _when(a.created_at), _when(a.refreshed_at), _when(a.expires_at)]
        for a in apps
    ]
    print(table(rows, ["APP", "AGENTS", "SCOPES", "CONNECTED", "REFRESHED", "TOKEN ENDS"]))
    return 0


def cmd_disconnect(args: argparse.Namespace) -> int:
    gone = control.run(_cfg(args), ctl.APPS_DISCONNECT, ctl.Named(name=args.provider))
    told = (
        "and revoked at the provider"
        if gone.revoked_at_provider
        else "(the provider could not be told: revoke it there)"
    )
    print(f"{gone.provider} disconnected {told}; agents' requests are no longer signed with it")
    return 0


def register(sub: Sub) -> None:
    apps = sub.add_parser("apps", help="app connections (Google, GitHub) whose OAuth tokens the vault holds")
    apps_sub = apps.add_subparsers(dest="apps_command", required=True, metavar="COMMAND")
    connect = apps_sub.add_parser(
        "connect",
        help="connect an app in a browser (OAuth with PKCE)",
        description="Make an OAuth client first: " + "; ".join(f"{k}: {v}" for k, v in CONSOLES.items()),
    )
    connect.add_argument("provider", choices=sorted(CONSOLES))
    connect.add_argument("--client-id", required=True, help="the OAuth client's id")
    connect.add_argument(
        "--client-secret-file", help=f"a file holding the client's secret (or set {SECRET_ENV}, or type it)"
    )
    connect.add_argument("--scope", action="append", help="an OAuth scope (repeat; default: read-only basics)")
    connect.add_argument(
        "--agent",
        action="append",
        help="an agent group that may use it (repeat; '*': every group; default: the only one)",
    )
    connect.add_argument("--no-browser", action="store_true", help="only print the page to open")
    connect.add_argument(
        "--device", action="store_true", help="GitHub: confirm a code on any device instead (no redirect at all)"
    )
    connect.add_argument(
        "--paste", action="store_true", help="also take the redirected address pasted on stdin (on when a terminal)"
    )
    connect.set_defaults(func=cmd_connect)
    apps_sub.add_parser("list", help="the connected apps (never a token)").set_defaults(func=cmd_list)
    disconnect = apps_sub.add_parser("disconnect", help="stop using a connection at once and revoke it")
    disconnect.add_argument("provider", choices=sorted(CONSOLES))
    disconnect.set_defaults(func=cmd_disconnect)
