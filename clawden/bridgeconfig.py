"""How a chat bridge is configured: its `[channels.<name>]` settings and its token, the token kept out of
every log line of the process that read it, and the secrets of its webhook route. The bridges and the webhook
front door use these, and `clawden doctor` checks them."""

from __future__ import annotations

import logging
import os
import tomllib

from clawden.bus import subjects, webhooks
from clawden.channelsettings import FLAGS, SETTINGS
from clawden.config import Config, token_variable
from clawden.natsauth import webhook_routes
from clawden.runtime import ConfigurationError


class BridgeConfigError(ConfigurationError):
    """The bridge cannot run as configured (no token, a token the platform rejects); said in plain words."""


def channel_settings(cfg: Config, channel: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """`[channels.<name>]` in config.toml, overridden by `CLAWDEN_<NAME>_<KEY>` variables."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    file = cfg.path("config.toml")
    if file.exists():
        table = tomllib.loads(file.read_text()).get("channels", {}).get(channel, {})
        out.update({str(k): str(v) for k, v in table.items() if k != "token"})  # secrets never live there
    prefix = f"CLAWDEN_{channel.upper()}_"
    out.update({k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix) and k != prefix + "TOKEN"})
    return out


def number(channel: str, settings: dict[str, str], key: str, default: float) -> float:
    """A non-negative number setting of `[channels.<channel>]`, or BridgeConfigError saying which is wrong."""
    try:
        value = float(settings.get(key, default))
    except ValueError:
        raise BridgeConfigError(f"[channels.{channel}] {key} must be a number, not {settings[key]!r}") from None
    if value < 0:
        raise BridgeConfigError(f"[channels.{channel}] {key} must not be negative")
    return value


def settings_problems(cfg: Config, channel: str, environ: dict[str, str] | None = None) -> list[str]:
    """Each value of `[channels.<channel>]` (or its `CLAWDEN_<NAME>_<KEY>`) that the built-in bridge would refuse
    at its start, read as the bridge reads it (`number` for seconds and sizes): `clawden doctor` says it before
    `clawden up` does. A channel not in `channelsettings.SETTINGS` (another's bridge) is not checked."""
    settings = channel_settings(cfg, channel, environ)
    problems: list[str] = []
    for key, kind in SETTINGS.get(channel, {}).items():
        value = settings.get(key)
        if value is None or kind == "text":
            continue
        if kind == "number":
            try:
                number(channel, settings, key, 0.0)
            except BridgeConfigError as exc:
                problems.append(str(exc))
        elif kind == "whole" and not value.strip().isdigit():
            problems.append(f"[channels.{channel}] {key} must be a whole number, not {value!r}")
        elif kind == "flag" and value.strip().lower() not in FLAGS:
            problems.append(f"[channels.{channel}] {key} must be true or false, not {value!r}")
    return problems


def read_secret(cfg: Config, channel: str, environ: dict[str, str] | None = None) -> str:
    """The bridge's credential: `CLAWDEN_<NAME>_TOKEN`, else the file `keys/<name>` (mode 0600).

    Every secret read here is also cut out of all log output of this process.
    """
    env = os.environ if environ is None else environ
    variable = token_variable(channel)
    file = cfg.keys_dir / channel
    secret = env.get(variable, "").strip()
    if not secret:
        if not file.exists():
            raise BridgeConfigError(f"no {channel} token: set {variable} or write it to {file} (mode 0600)")
        if file.stat().st_mode & 0o077:
            raise BridgeConfigError(f"{file} is readable by other users; run `chmod 600 {file}`")
        secret = file.read_text().strip()
        if not secret:
            raise BridgeConfigError(f"{file} is empty; it should hold the {channel} token")
    redact(secret)
    return secret


def read_route_secret(cfg: Config, channel: str, key: str, environ: dict[str, str] | None = None) -> str | None:
    """A webhook route's secret: `CLAWDEN_<CHANNEL>_<KEY>`, else keys/<channel>.<key> (mode 0600); None when
    neither is there."""
    env = os.environ if environ is None else environ
    value = env.get(f"CLAWDEN_{channel.upper()}_{key.upper()}", "").strip()
    if value:
        return value
    path = cfg.keys_dir / f"{channel}.{key}"
    if not path.exists():
        return None
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(f"{path} is readable by other users; run `chmod 600 {path}`")
    return path.read_text().strip() or None


def route_secrets(cfg: Config, environ: dict[str, str] | None = None) -> dict[str, tuple[str, dict[str, str | None]]]:
    """channel -> (scheme, each secret it needs or None) for every `[webhooks.routes]` channel: what the front
    door serves (a route with all its secrets) and what `clawden doctor` checks."""
    out: dict[str, tuple[str, dict[str, str | None]]] = {}
    for channel, scheme in sorted(webhook_routes(cfg).items()):
        if scheme not in webhooks.SECRETS:
            raise ConfigurationError(
                f"[webhooks.routes] {channel} = {scheme!r}: known schemes are {', '.join(webhooks.SCHEMES)}"
            )
        subjects.token(channel)
        out[channel] = (
            scheme,
            {key: read_route_secret(cfg, channel, key, environ) for key in webhooks.SECRETS[scheme]},
        )
    return out


class _Redactor(logging.Filter):
    """Replaces secrets in every record (message, arguments and traceback) before any handler sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
            record.exc_text = None
        for secret in self.secrets:
            message = message.replace(secret, "[redacted]")
        record.msg, record.args = message, ()
        return True


_redactor = _Redactor()


def redact(secret: str) -> None:
    """Keep `secret` out of this process's logs, whichever handler writes them."""
    if len(secret) < 8:
        return  # too short to cut out without mangling ordinary words
    _redactor.secrets.add(secret)
    for handler in logging.getLogger().handlers:
        if _redactor not in handler.filters:
            handler.addFilter(_redactor)
