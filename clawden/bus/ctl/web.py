"""The web service's control verb (`clawden.ctl.web.login`), behind `clawden web login`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from clawden.bus.ctl.names import USER_PATTERN
from clawden.bus.ctl.verb import Reply, Request, declare

SERVICE = "web"


class LoginRequest(Request, frozen=True):
    user: Annotated[str, msgspec.Meta(pattern=USER_PATTERN)]  # a user id (names.py), e.g. web:ada


class LoginLink(Reply, frozen=True):
    url: str  # opens a page whose one button signs the browser in, once
    user: str
    expires_at: float


LOGIN = declare(SERVICE, "login", LoginRequest, LoginLink)
