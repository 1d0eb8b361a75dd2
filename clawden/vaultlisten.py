"""How the vault's TCP listener speaks, from `[vault] tcp_listen`, `tcp_tls` and `tcp_names` (pure): whether it
speaks TLS and which names its certificate carries. The vault makes its listener by these rules, and
`clawden doctor` reads the listener the same way."""

from __future__ import annotations

from collections.abc import Sequence

from clawden.pki import is_loopback

WILDCARDS = ("", "0.0.0.0", "::")  # names of "every address", not a bind made here


def split_listen(listen: str) -> tuple[str, int | None]:
    """(host, port) of `[vault] tcp_listen`, `host:port` (`[v6]:port` too); port None when it is not one."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() and int(port) < 65536 else None


def tls_on(mode: bool | str, host: str) -> bool:
    """Whether the listener bound to `host` speaks TLS: as `[vault] tcp_tls` says, "auto" on off loopback."""
    if isinstance(mode, bool):
        return mode
    return not is_loopback(host)


def listener_names(host: str, extra: Sequence[str], this_host: Sequence[str]) -> tuple[str, ...]:
    """The names the listener's certificate carries, the first as its subject: the address it binds (unless a
    wildcard), `[vault] tcp_names`, and where both say nothing, `this_host` (the machine's names)."""
    named = [n for n in (host, *extra) if n not in WILDCARDS]
    return tuple(dict.fromkeys(named or [n for n in this_host if n]))
