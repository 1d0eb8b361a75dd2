"""A message and its card as plain text, for whatever shows it without buttons: the bridges and the
terminal (`clawden chat`)."""

from __future__ import annotations

from clawden.bus import events as ev


def render_text(text: str, card: ev.Card | None, numbered: bool = False) -> str:
    """The message text with a card's title and body under it (and its choices, numbered, when the
    platform has no buttons)."""
    pieces = [text.strip()]
    if card is not None:
        own_words = (card.title.strip(), card.body.strip(), f"{card.title.strip()}\n\n{card.body.strip()}")
        if pieces[0] in own_words:
            pieces = []  # the text is the card's own words (a fallback for platforms without cards)
        pieces += [card.title.strip(), card.body.strip()]
        if numbered and card.buttons:
            pieces.append("\n".join(f"{i}) {b.label}" for i, b in enumerate(card.buttons, 1)))
    return "\n\n".join(p for p in pieces if p)
