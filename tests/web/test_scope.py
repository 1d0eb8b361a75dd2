"""Who may see and change what on the dashboard, from the router's role grants, as tables: the owner and a
global admin everything, an admin of a group that group only (never `*`), anyone else nothing."""

from __future__ import annotations

import pytest

from clawden.bus.ctl import router as router_ctl
from services.web import scope


def standing(user: str, *groups: str, owner: bool = False, admin: bool = False) -> router_ctl.Standing:
    return router_ctl.Standing(user_id=user, owner=owner, admin=admin, agent_groups=list(groups), first_owner="web:ada")


# as the router answers `standing` for each (tests/router/test_control.py derives it from grants)
STANDINGS = {
    "web:ada": standing("web:ada", owner=True),
    "web:bob": standing("web:bob", admin=True),
    "web:cy": standing("web:cy", "a", "c"),
    "web:eve": standing("web:eve"),
}


def of(user: str) -> scope.Scope:
    return scope.of(STANDINGS[user])


@pytest.mark.parametrize(
    ("user", "owner", "everything", "groups"),
    [
        ("web:ada", True, True, set()),
        ("web:bob", False, True, set()),
        ("web:cy", False, False, {"a", "c"}),
        ("web:eve", False, False, set()),
    ],
)
def test_the_scope_is_the_routers_word_on_the_user(user: str, owner: bool, everything: bool, groups: set[str]) -> None:
    found = of(user)
    assert (found.owner, found.everything, set(found.groups)) == (owner, everything, groups)
    assert found.admin == (everything or bool(groups))


@pytest.mark.parametrize(
    ("user", "group", "sees"),
    [
        ("web:ada", "b", True),
        ("web:ada", "*", True),
        ("web:bob", "b", True),
        ("web:cy", "a", True),
        ("web:cy", "b", False),
        ("web:cy", "*", False),
        ("web:eve", "a", False),
    ],
)
def test_an_admin_sees_only_the_groups_they_administer(user: str, group: str, sees: bool) -> None:
    assert of(user).sees(group) is sees


@pytest.mark.parametrize(
    ("groups", "sees_any", "owns_all"),
    [
        (["a"], True, True),
        (["a", "c"], True, True),
        (["a", "b"], True, False),  # shared with a group not theirs: shown, not changed
        (["*"], True, False),  # every group may use it: shown, never changed by an admin of some
        (["b"], False, False),
        ([], False, False),  # granted to nobody: the owner's to tend
    ],
)
def test_a_thing_shared_by_groups_is_shown_if_any_is_ours_and_changed_only_if_all_are(
    groups: list[str], sees_any: bool, owns_all: bool
) -> None:
    cy = of("web:cy")
    assert (cy.sees_any(groups), cy.owns_all(groups)) == (sees_any, owns_all)
    owner = of("web:ada")
    assert owner.sees_any(groups) and owner.owns_all(groups)


def test_refusals_say_what_was_asked_and_what_the_person_administers() -> None:
    cy = of("web:cy")
    cy.need("a")
    cy.need_all(["a", "c"], "x")
    with pytest.raises(scope.OutOfScope, match="agent group b is not one you administer; web:cy administers a, c"):
        cy.need("b")
    with pytest.raises(scope.OutOfScope, match="secret s is for a, b"):
        cy.need_all(["a", "b"], "secret s")
    with pytest.raises(scope.OutOfScope, match="the logs is for owners and admins of every agent group"):
        cy.need_everything("the logs")
    cy.need_admin("the dashboard")
    nobody = of("web:eve")
    with pytest.raises(scope.OutOfScope, match="the dashboard is for owners and admins; web:eve is neither"):
        nobody.need_admin("the dashboard")
    with pytest.raises(scope.OutOfScope, match="web:eve is neither an owner nor an admin"):
        nobody.need_all([], "the dashboard")
    of("web:bob").need_everything("the logs")
