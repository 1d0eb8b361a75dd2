"""web.db: a link opens one session once; a redelivered reply is kept once; an edit changes the message in place."""

from __future__ import annotations

from pathlib import Path

from clawden.bus import events as ev
from services.web.store import Session, WebStore


def store(tmp_path: Path) -> WebStore:
    return WebStore.open(tmp_path / "web.db")


def test_a_link_opens_one_session_and_then_is_spent(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.add_link("tok", "web:ada", now=100.0, lasts=600.0)
    assert s.check_link("tok", 101.0) == "ok"
    opened = s.use_link("tok", "sid", "csrf", now=101.0, lasts=3600.0)
    assert opened == Session("web:ada", "csrf", 3701.0)
    assert s.use_link("tok", "sid2", "csrf2", now=102.0, lasts=3600.0) == "used"
    assert s.session("sid", 200.0) == opened and s.session("sid2", 200.0) is None
    assert s.session("sid", 3701.0) is None  # expired
    assert s.conn.execute("SELECT count(*) FROM sessions WHERE digest = 'sid'").fetchone()[0] == 0  # digests only
    s.end_session("sid")
    assert s.session("sid", 200.0) is None


def test_an_expired_or_unknown_link_opens_nothing(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.add_link("tok", "web:ada", now=100.0, lasts=600.0)
    assert s.use_link("tok", "sid", "c", now=700.0, lasts=60.0) == "expired"
    assert s.use_link("nope", "sid", "c", now=100.0, lasts=60.0) == "unknown"
    assert s.session("sid", 100.0) is None


def reply(mid: str, card: ev.Card | None = None) -> ev.OutboundMessage:
    return ev.OutboundMessage(
        id=mid, route=ev.Route(channel="web", chat_id="c1"), text="hello", agent_group="main", card=card
    )


def test_a_redelivered_reply_is_kept_once_and_an_edit_replaces_it(tmp_path: Path) -> None:
    s = store(tmp_path)
    card = ev.Card(title="Tea?", buttons=(ev.Button(id="b1", label="Tea"),))
    first = s.answered(reply("o1", card), 1.0)
    assert first is not None and first.card_id == "o1" and first.sender == "main"
    assert s.answered(reply("o1", card), 2.0) is None
    edit = ev.OutboundEdit(id="e1", route=ev.Route(channel="web", chat_id="c1"), target_message_id="o1", text="done")
    edited = s.edited(edit)
    assert edited is not None and edited.text == "done" and edited.card is None and edited.version == 1
    assert [m.text for m in s.history("c1")] == ["done"]


def test_the_persons_message_is_kept_once_by_its_page_id(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.said("c1", "m1", "web:ada", "hi", 1.0) is not None
    assert s.said("c1", "m1", "web:ada", "hi", 2.0) is None
    assert [(m.direction, m.text) for m in s.history("c1")] == [("in", "hi")]
