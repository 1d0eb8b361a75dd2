"""The control contract: one declaration per verb, at a subject that exists, each request refusing what it does
not know, and several ops at one subject told apart by `op`."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from clawden.bus import ctl


def test_every_verb_is_declared_once_at_a_valid_subject() -> None:
    keys = Counter((v.service, v.key) for v in ctl.VERBS)
    assert [k for k, n in keys.items() if n > 1] == []
    for verb in ctl.VERBS:
        bound = verb.at("channel-telegram") if verb.service.endswith("*") else verb
        op = f".{verb.own_op}" if verb.own_op else ""  # an op is asked at its own subject, so a grant can name it alone
        assert bound.subject == f"clawden.ctl.{bound.service}.{verb.name}{op}"


def test_ops_at_one_subject_are_all_ops_and_a_lone_request_has_none() -> None:
    by_subject: dict[tuple[str, str], list[ctl.Verb[msgspec.Struct, object]]] = {}
    for verb in ctl.VERBS:
        by_subject.setdefault((verb.service, verb.name), []).append(verb)
    for (service, name), verbs in by_subject.items():
        if len(verbs) > 1:
            assert all(v.op for v in verbs), f"{service}.{name}: several verbs need an op each"


def test_a_request_is_decoded_once_into_the_verb_it_is_for() -> None:
    verb, request = ctl.Subject("router", "groups").decode(b'{"op": "get", "name": "main"}')
    assert verb is ctl.router.GROUPS_GET and request == ctl.router.GroupGet(name="main")
    verb, request = ctl.Subject("vault", "secrets-list").decode(b"")
    assert verb is ctl.vault.SECRETS_LIST and request == ctl.Nothing()


@pytest.mark.parametrize(
    ("identity", "name", "body", "words"),
    [
        ("approvals", "list", b'{"limit": "ten"}', "bad request: Expected `int`, got `str` - at `$.limit`"),
        ("router", "groups", b'{"op": "explode"}', "bad request: Invalid value 'explode' - at `$.op`"),
        ("router", "groups", b'{"name": "x"}', "bad request: Object missing required field `op`"),
        ("vault", "gateway", b'{"agent_group": "main", "mode": "open"}', "unknown field `mode`"),
        ("scheduler", "add", b'{"agent_group": "main"', "bad request: not JSON"),
        ("router", "chats", b'{"op": "create", "channel": "tg"}', "missing required field `chat_id`"),
    ],
)
def test_a_bad_request_is_refused_with_what_and_where(identity: str, name: str, body: bytes, words: str) -> None:
    with pytest.raises(ctl.BadRequest) as refused:
        ctl.Subject(identity, name).decode(body)
    assert words in str(refused.value)


def test_a_verb_many_serve_is_asked_of_one_of_them() -> None:
    caps = ctl.common.CAPABILITIES
    assert caps.at("channel-slack").subject == "clawden.ctl.channel-slack.capabilities"
    with pytest.raises(ValueError, match="served by many"):
        _ = caps.subject
    with pytest.raises(ValueError, match="not served by 'router'"):
        caps.at("router")
    assert ctl.common.PING.at("vault").subject == "clawden.ctl.vault.ping"
    assert ctl.common.CAPABILITIES in ctl.served_by("channel-telegram")
    assert ctl.common.CAPABILITIES not in ctl.served_by("router")


def test_a_subject_nobody_declared_is_no_subject() -> None:
    with pytest.raises(ValueError, match="router serves no verb 'nope'"):
        ctl.Subject("router", "nope")


def test_a_secret_request_never_prints_its_value() -> None:
    request = ctl.vault.AddSecret(name="gh", type="generic", value="ghp_not-for-logs")
    assert "ghp_" not in repr(request)


def test_a_verb_many_serve_comes_out_of_a_subject_bound_to_the_one_asked() -> None:
    verb, _ = ctl.Subject("router", "ping").decode(b"{}")
    assert verb.subject == "clawden.ctl.router.ping"
