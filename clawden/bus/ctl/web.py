"""The web service's control verb (`clawden.ctl.web.login`), behind `clawden web login`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from clawden.bus.ctl.names import USER_PATTERN
from clawden.bus.ctl.verb import Reply, Request, declare

SERVICE = "web"


# A user id (names.py), or "" for the install's first owner (what `clawden web login` asks by default).
LOGIN_USER = f"^$|{USER_PATTERN}"


class LoginRequest(Request, frozen=True):
    user: Annotated[str, msgspec.Meta(pattern=LOGIN_USER)] = ""  # e.g. web:ada; "": the owner


class LoginLink(Reply, frozen=True):
    url: str  # opens a page whose one button signs the browser in, once
    user: str
    expires_at: float


LOGIN = declare(SERVICE, "login", LoginRequest, LoginLink)
