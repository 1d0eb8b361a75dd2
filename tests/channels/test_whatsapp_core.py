"""The WhatsApp bridge's pure parts, as tables: what a Graph error means, and how a card's buttons are shown."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.channels.bridge import ButtonRef
from services.channels.state import BridgeState
from services.channels.whatsapp import graph_error, interactive, media_kind, numbered


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (429, 130429, "rate_limited"),  # "Error codes": throughput reached
        (400, 131056, "rate_limited"),  # pair rate limit
        (400, 80007, "rate_limited"),
        (500, 131000, "transient"),
        (503, 0, "transient"),
        (400, 131016, "transient"),  # service unavailable
        (400, 131047, "permanent"),  # re-engagement: outside the 24-hour window
        (401, 190, "permanent"),  # the token
        (400, 100, "permanent"),  # invalid parameter
    ],
)
def test_graph_errors_map_to_retry_or_permanent_failure(status: int, code: int, kind: str) -> None:
    exc = graph_error(status, {"error": {"message": "m", "code": code}}, "2" if status == 429 else None)
    assert exc.kind == kind and exc.code == code
    if status == 429:
        assert exc.retry_after == 2.0
    if code == 131047:
        assert "24-hour" in exc.description


def buttons(*labels: str) -> list[ButtonRef]:
    return [ButtonRef(label, f"tok:{i}") for i, label in enumerate(labels)]


def test_up_to_three_short_buttons_are_reply_buttons() -> None:
    shaped = interactive("Allow?", buttons("Allow", "Deny"))
    assert shaped is not None and shaped["type"] == "button"
    assert [b["reply"] for b in shaped["action"]["buttons"]] == [
        {"id": "tok:0", "title": "Allow"},
        {"id": "tok:1", "title": "Deny"},
    ]


@pytest.mark.parametrize("labels", [("a", "b", "c", "d"), ("A label longer than twenty",)])
def test_more_than_three_or_long_labels_become_a_list(labels: tuple[str, ...]) -> None:
    shaped = interactive("Pick", buttons(*labels))
    assert shaped is not None and shaped["type"] == "list"
    rows = shaped["action"]["sections"][0]["rows"]
    assert [r["id"] for r in rows] == [f"tok:{i}" for i in range(len(labels))]
    assert all(len(r["title"]) <= 24 for r in rows)


def test_more_than_ten_become_numbered_text() -> None:
    many = buttons(*(f"option {i}" for i in range(11)))
    assert interactive("Pick", many) is None
    assert numbered("Pick", many).endswith("10. option 9\n11. option 10")


@pytest.mark.parametrize(
    ("mime", "kind"),
    [
        ("image/png", "image"),
        ("image/webp", "document"),
        ("audio/ogg", "audio"),
        ("video/mp4", "video"),
        ("application/pdf", "document"),
    ],
)
def test_a_file_goes_as_the_media_type_whatsapp_takes_it_as(mime: str, kind: str) -> None:
    assert media_kind(mime) == kind


async def test_a_bridge_forgets_only_the_old_cursors_of_one_kind(tmp_path: Path) -> None:
    state = await BridgeState.open(tmp_path / "whatsapp.db")
    try:
        await state.set_cursor("sent:wamid.1", "{}")
        await state.set_cursor("window:447700900123", "1700000000")
        await state.set_cursor("sentinel", "kept")
        assert await state.forget_cursors("sent:", time.time() + 1) == 1
        assert await state.forget_cursors("window:", time.time() - 60) == 0  # set just now: not old yet
        assert await state.cursor("sent:wamid.1") is None
        assert await state.cursor("window:447700900123") is not None
        assert await state.cursor("sentinel") is not None
    finally:
        await state.close()
