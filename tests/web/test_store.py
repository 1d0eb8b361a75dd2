"""web.db: a link opens one session once; a redelivered reply is kept once; an edit changes the message in place."""

from __future__ import annotations

from pathlib import Path

from clawden.bus import events as ev
from services.web.store import Session, Upload, WebStore, dumps


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


def edit(target: str, chat: str = "c1", text: str = "done") -> ev.OutboundEdit:
    return ev.OutboundEdit(
        id=f"e-{target}", route=ev.Route(channel="web", chat_id=chat), target_message_id=target, text=text
    )


def test_an_edit_changes_only_a_message_the_agent_sent_in_the_edits_own_chat(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.said("c1", "m1", "web:ada", "pay the plumber", 1.0) is not None
    assert s.answered(reply("o1"), 2.0) is not None  # the agent's, in c1
    other = ev.OutboundMessage(id="o2", route=ev.Route(channel="web", chat_id="c2"), text="c2's secret")
    assert s.answered(other, 3.0) is not None
    assert s.edited(edit("m1", text="pay the agent")) is None  # what the person said is theirs
    assert s.edited(edit("o2")) is None  # another chat's: neither changed nor shown here
    assert s.edited(edit("o9")) is None
    assert [(m.text, m.version) for m in s.history("c1")] == [("pay the plumber", 0), ("hello", 0)]
    assert [(m.text, m.version) for m in s.history("c2")] == [("c2's secret", 0)]
    mine = s.edited(edit("o1"))
    assert mine is not None and (mine.chat_id, mine.text, mine.version) == ("c1", "done", 1)


def test_a_redelivered_reply_is_found_as_kept_only_in_its_own_chat_and_only_if_the_agent_sent_it(
    tmp_path: Path,
) -> None:
    s = store(tmp_path)
    kept = s.answered(reply("o1"), 1.0)
    assert s.said("c1", "m1", "web:ada", "mine", 2.0) is not None
    assert s.reply("c1", "o1") == kept
    assert [s.reply("c2", "o1"), s.reply("c1", "m1"), s.reply("c1", "o9")] == [None] * 3


def test_the_persons_message_is_kept_once_by_its_page_id(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert s.said("c1", "m1", "web:ada", "hi", 1.0) is not None
    assert s.said("c1", "m1", "web:ada", "hi", 2.0) is None
    assert [(m.direction, m.text) for m in s.history("c1")] == [("in", "hi")]


def test_an_agents_files_are_named_on_the_message_and_only_their_paths_are_served(tmp_path: Path) -> None:
    s = store(tmp_path)
    sent = ev.OutboundMessage(
        id="o2",
        route=ev.Route(channel="web", chat_id="c1"),
        text="here",
        files=("/s/main/x/outbox/3/report.txt", "file:///s/main/x/outbox/3/chart.png"),
    )
    shown = s.answered(sent, 1.0)
    assert shown is not None and shown.files == ("report.txt", "chart.png")
    assert shown.as_json()["files"] == ["report.txt", "chart.png"] and "/s/main" not in dumps(shown)
    assert s.sent_file("c1", "o2", 1) == "file:///s/main/x/outbox/3/chart.png"
    assert [s.sent_file("c2", "o2", 0), s.sent_file("c1", "o2", 2), s.sent_file("c1", "o2", -1)] == [None] * 3
    assert s.said("c1", "m9", "web:ada", "mine", 2.0) is not None
    assert s.sent_file("c1", "m9", 0) is None  # the person's message: nothing of it is served


def upload(uid: str, chat: str = "c1", user: str = "web:ada") -> Upload:
    return Upload(uid, chat, user, f"{uid}.txt", "text/plain", 3, f"/d/channels/web/files/{uid}/{uid}.txt")


def test_a_message_takes_only_its_senders_uploads_in_its_chat_and_a_resend_takes_them_again(tmp_path: Path) -> None:
    s = store(tmp_path)
    for u in (upload("u1"), upload("u2"), upload("bob", user="web:bob"), upload("elsewhere", chat="c2")):
        s.uploaded(u, 1.0)
    taken = s.take_uploads(["u1", "u2"], "c1", "web:ada", "m1")
    assert taken == (upload("u1"), upload("u2"))
    assert taken[0].attachment() == ev.Attachment(
        name="u1.txt", mime="text/plain", size=3, url="file:///d/channels/web/files/u1/u1.txt"
    )
    assert s.take_uploads(["u1"], "c1", "web:ada", "m1") == (upload("u1"),)  # the same message, resent
    assert s.take_uploads(["u1"], "c1", "web:ada", "m2") == "u1"  # another message: taken already
    assert s.take_uploads(["bob"], "c1", "web:ada", "m3") == "bob"
    assert s.take_uploads(["elsewhere"], "c1", "web:ada", "m3") == "elsewhere"
    assert s.take_uploads(["nope"], "c1", "web:ada", "m4") == "nope"
    shown = s.said("c1", "m1", "web:ada", "", 2.0, taken)
    assert shown is not None and shown.files == ("u1.txt", "u2.txt")
    assert [m.files for m in s.history("c1")] == [("u1.txt", "u2.txt")]


def test_uploads_older_than_the_keeping_time_are_forgotten_and_their_paths_given_back(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.uploaded(upload("old"), 1.0)
    s.uploaded(upload("new"), 100.0)
    assert s.prune_uploads(50.0) == ["/d/channels/web/files/old/old.txt"]
    assert s.take_uploads(["old"], "c1", "web:ada", "m1") == "old"
    assert s.take_uploads(["new"], "c1", "web:ada", "m1") == (upload("new"),)
    assert s.prune_uploads(50.0) == []
