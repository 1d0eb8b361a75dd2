"""Control requests: the CLI's changes land in router.db, and mistakes come back as plain words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from clawden.bus import ctl
from services.router.control import Control
from services.router.store import RouterError, RouterStore


@pytest.fixture
def control(tmp_path: Path) -> Control:
    store = RouterStore.open(tmp_path / "router.db")
    store.seed("main", "local", "alice", 1.0)
    return Control(store, clock=lambda: 2.0)


def ask(control: Control, resource: str, payload: object) -> Any:
    """A request as the router's endpoint takes it: decoded by the contract, answered, sent as JSON."""
    verb, request = ctl.Subject("router", resource).decode(msgspec.json.encode(payload))
    return msgspec.to_builtins(control.handle(verb, request))


def call(control: Control, resource: str, **payload: Any) -> Any:
    return ask(control, resource, payload)


def test_groups_are_created_updated_listed_and_deleted(control: Control) -> None:
    call(control, "groups", op="create", name="work", model="claude-x", container={"memory": "1g"})
    call(control, "groups", op="update", name="work", container={"cpus": 1.5})
    call(control, "wirings", op="create", channel="slack", chat_id="C1", agent_group="work")
    work = call(control, "groups", op="get", name="work")
    assert (work["model"], work["container"]) == ("claude-x", {"memory": "1g", "cpus": 1.5})
    assert [w["chat_id"] for w in work["wirings"]] == ["C1"]
    assert [g["name"] for g in call(control, "groups", op="list")] == ["main", "work"]
    assert call(control, "groups", op="delete", name="work")["wirings"] == 1
    assert [g["name"] for g in call(control, "groups", op="list")] == ["main"]


def test_a_wiring_defaults_to_mentions_in_groups_and_every_message_in_direct_chats(control: Control) -> None:
    call(control, "chats", op="create", channel="telegram", chat_id="g1", is_group=True)
    assert (
        call(control, "wirings", op="create", channel="telegram", chat_id="g1", agent_group="main")["engage_mode"]
        == "mention"
    )
    assert (
        call(control, "wirings", op="create", channel="telegram", chat_id="d1", agent_group="main")["engage_mode"]
        == "pattern"
    )
    changed = call(
        control,
        "wirings",
        op="update",
        channel="telegram",
        chat_id="d1",
        agent_group="main",
        session_mode="per-thread",
        priority=3,
    )
    assert (changed["session_mode"], changed["priority"], changed["engage_mode"]) == ("per-thread", 3, "pattern")


def test_roles_and_members_are_granted_and_revoked(control: Control) -> None:
    call(control, "roles", op="grant", user_id="telegram:7", role="admin", agent_group="main")
    call(control, "members", op="add", agent_group="main", user_id="telegram:8")
    assert call(control, "approvers", op="get", agent_group="main")["approvers"] == ["telegram:7", "local:alice"]
    users = {u["id"]: u for u in call(control, "users", op="list")}
    assert users["telegram:7"]["roles"] == ["admin:main"]
    assert users["telegram:8"]["member_of"] == ["main"]
    call(control, "roles", op="revoke", user_id="telegram:7", role="admin", agent_group="main")
    assert call(control, "approvers", op="get", agent_group="main")["approvers"] == ["local:alice"]


def test_standing_says_read_only_what_one_person_administers_and_who_the_first_owner_is(control: Control) -> None:
    call(control, "groups", op="create", name="work")
    call(control, "roles", op="grant", user_id="web:cy", role="admin", agent_group="work")
    call(control, "roles", op="grant", user_id="web:cy", role="admin", agent_group="main")
    call(control, "roles", op="grant", user_id="web:bob", role="admin")
    call(control, "roles", op="grant", user_id="web:ada", role="owner")
    cy = call(control, "standing", op="get", user_id="web:cy")
    assert (cy["owner"], cy["admin"], cy["agent_groups"]) == (False, False, ["main", "work"])
    assert call(control, "standing", op="get", user_id="web:bob")["admin"] is True
    ada = call(control, "standing", op="get", user_id="web:ada")
    assert (ada["owner"], ada["first_owner"]) == (True, "local:alice")  # granted later than the install's owner
    nobody = call(control, "standing", op="get")
    assert (nobody["user_id"], nobody["owner"], nobody["agent_groups"], nobody["first_owner"]) == (
        "",
        False,
        [],
        "local:alice",
    )
    with pytest.raises(ctl.BadRequest, match="op"):  # nothing but `get` at this subject: no grant sneaks in
        ask(control, "standing", {"op": "grant", "user_id": "web:eve", "role": "owner"})


def test_an_invite_is_admitted_by_the_chats_unknown_sender_policy_and_a_refusal_is_dropped(control: Control) -> None:
    call(control, "members", op="add", agent_group="main", user_id="matrix:@ada:x")
    call(control, "chats", op="create", channel="matrix", chat_id="!strict", policy="strict")
    call(control, "chats", op="create", channel="matrix", chat_id="!open", policy="public")

    def admit(chat_id: str, user_id: str) -> tuple[bool, str]:
        answer = call(control, "admit", op="invite", channel="matrix", chat_id=chat_id, user_id=user_id)
        return answer["allowed"], answer["reason"]

    assert admit("!strict", "matrix:@ada:x") == (True, "a known user")
    assert admit("!open", "matrix:@eve:x") == (True, "unknown user, public chat")
    assert admit("!new", "@eve:x") == (True, "unknown user, request_approval chat")  # an approver is asked later
    assert admit("!strict", "matrix:@eve:x") == (False, "invited by an unknown user (strict chat)")
    call(control, "chats", op="create", channel="matrix", chat_id="*", policy="strict")  # the channel's default
    assert admit("!new", "matrix:@eve:x")[0] is False and admit("!open", "matrix:@eve:x")[0] is True
    assert sorted((d["chat_id"], d["sender_id"]) for d in call(control, "dropped", op="list", channel="matrix")) == [
        ("!new", "matrix:@eve:x"),
        ("!strict", "matrix:@eve:x"),
    ]


@pytest.mark.parametrize(
    ("resource", "payload", "words"),
    [
        ("groups", {"op": "create", "name": "Bad Name"}, "agent group name 'Bad Name': use 1-40 lowercase"),
        ("groups", {"op": "create", "name": "main"}, "agent group 'main' already exists"),
        ("groups", {"op": "get", "name": "nope"}, "no agent group named 'nope' (see `clawden groups list`)"),
        ("groups", {"op": "explode"}, "bad request: Invalid value 'explode' - at `$.op`"),
        ("groups", {"op": "create", "name": "x", "container": {"gpus": 1}}, "unknown field `gpus`"),
        ("wirings", {"op": "create", "channel": "tg", "chat_id": "1", "agent_group": "ghost"}, "no agent group named"),
        (
            "wirings",
            {"op": "create", "channel": "tg", "chat_id": "1", "agent_group": "main", "engage_pattern": "("},
            "engage pattern '(' is not a regular expression",
        ),
        (
            "wirings",
            {"op": "create", "channel": "tg", "chat_id": "1", "agent_group": "main", "session_mode": "sometimes"},
            "`$.session_mode`",
        ),
        ("wirings", {"op": "create", "channel": "local", "chat_id": "*", "agent_group": "main"}, "already wired"),
        ("wirings", {"op": "delete", "channel": "tg", "chat_id": "1", "agent_group": "main"}, "main is not wired"),
        ("roles", {"op": "grant", "user_id": "bob", "role": "admin"}, "users are platform identities like"),
        ("roles", {"op": "grant", "user_id": "tg:1", "role": "owner", "agent_group": "main"}, "always global"),
        ("roles", {"op": "revoke", "user_id": "tg:1", "role": "admin"}, "tg:1 is not admin"),
        ("members", {"op": "remove", "agent_group": "main", "user_id": "tg:1"}, "is not a member of main"),
        ("chats", {"op": "update", "channel": "tg", "chat_id": "404"}, "no chat '404' on tg"),
        ("pair", {"op": "create", "channel": "no spaces"}, "channel 'no spaces'"),
    ],
)
def test_mistakes_are_refused_in_plain_words(
    control: Control, resource: str, payload: dict[str, Any], words: str
) -> None:
    with pytest.raises((RouterError, ctl.BadRequest)) as refused:
        ask(control, resource, payload)
    assert words in str(refused.value)


def test_a_payload_that_is_not_json_is_refused(control: Control) -> None:
    with pytest.raises(ctl.BadRequest, match="not JSON"):
        ctl.Subject("router", "groups").decode(b"{nope")
