"""What a signed-in person may see and change, decided without I/O from the router's word on who they are: an
owner or a global admin everything, an admin of some agent groups those groups only, anyone else nothing on the
dashboard. Every page filters by it and every POST is checked against it before anything is asked of another service."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from clawden.bus.ctl import router as router_ctl

EVERY_GROUP = "*"  # a vault grant or rule for every agent group


class OutOfScope(Exception):
    """Asked for a group, task, secret or page this person does not administer; said to them as is (403)."""


@dataclass(frozen=True)
class Scope:
    user: str
    owner: bool
    everything: bool  # an owner or a global admin: every agent group
    groups: frozenset[str]  # the agent groups administered (meaningful when not everything)

    @property
    def admin(self) -> bool:
        """Any standing at all: the dashboard is for owners and admins."""
        return self.everything or bool(self.groups)

    def sees(self, group: str) -> bool:
        """One agent group (or `*`, every group: only who administers them all)."""
        return self.everything or (group != EVERY_GROUP and group in self.groups)

    def sees_any(self, groups: Iterable[str]) -> bool:
        """A thing shared by groups (a chat wired to several, a secret granted to several): any one of ours,
        or `*` (a secret every group may use is shown, as it is used by ours)."""
        return self.everything or any(g == EVERY_GROUP or g in self.groups for g in groups)

    def owns_all(self, groups: Iterable[str]) -> bool:
        """May change a thing shared by groups: every one of them is ours (an admin never changes `*`)."""
        listed = list(groups)
        return self.everything or (bool(listed) and all(self.sees(g) for g in listed))

    def need(self, group: str) -> None:
        if not self.sees(group):
            raise OutOfScope(refusal(self, group))

    def need_all(self, groups: Iterable[str], what: str) -> None:
        listed = list(groups)
        if not self.owns_all(listed):
            raise OutOfScope(f"refused: {what} is for {', '.join(listed) or 'no agent group'}; {mine(self)}")

    def need_admin(self, what: str) -> None:
        if not self.admin:
            raise OutOfScope(f"refused: {what} is for owners and admins; {mine(self)}")

    def need_everything(self, what: str) -> None:
        if not self.everything:
            raise OutOfScope(f"refused: {what} is for owners and admins of every agent group; {mine(self)}")


def mine(scope: Scope) -> str:
    if not scope.admin:
        return f"{scope.user} is neither an owner nor an admin (`clawden roles grant`)"
    return f"{scope.user} administers {', '.join(sorted(scope.groups))}"


def refusal(scope: Scope, group: str) -> str:
    return f"refused: agent group {group} is not one you administer; {mine(scope)}"


def of(standing: router_ctl.Standing) -> Scope:
    """The router's word on this user (`clawden.ctl.router.standing`, the grants `clawden roles` makes): `owner`,
    `admin` of every group, or `admin` of some groups."""
    return Scope(
        user=standing.user_id,
        owner=standing.owner,
        everything=standing.owner or standing.admin,
        groups=frozenset(standing.agent_groups),
    )
