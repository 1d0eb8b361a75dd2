"""People's edits and deletes, folded in at the moment the agent reads: the agent runner's pure core.

An edit or delete arrives as a row of its own, after the row it revises (`sessiondb.REVISION`,
`sessiondb.REVISES`); nothing is rewritten in place, because only this side knows what the agent has
read. When the runner is about to send pending rows to Claude Code:
- a revised row still among them is sent as the person now means it: an edit replaces its text (the
  agent sees only the new one), a delete drops it (the agent never sees it), and the revision rows ride
  along with it, settled when it is;
- a row already read (or one this session never had) cannot be taken back: the revision is sent as a
  plain note, so the agent can correct itself.
A row deleted before it was read is settled with its delete without waking the model. What is left is sent at
most a prompt's limit at a time (`window`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from clawden import sessiondb

Message = sessiondb.InboundMessage


@dataclass(frozen=True)
class Row:
    message: Message  # as the agent will see it
    riders: tuple[int, ...] = ()  # revision rows folded into it: claimed and settled with it
    note: bool = False  # a note about a row already read (an edit, a delete): never left out of a prompt


@dataclass(frozen=True)
class Folded:
    rows: list[Row]  # what to send now, oldest first, at most the limit (`window`)
    withdrawn: list[int]  # deleted before anyone read them, with their deletes: settled without the model


@dataclass
class _Entry:
    message: Message
    riders: list[int] = field(default_factory=list)
    dropped: bool = False  # deleted before it was read
    merged: bool = False  # a note a later one replaced (and carries)
    note_of: str = ""  # the read row this entry is a note about ("": a message of its own)
    deletes: bool = False  # a note saying the row was deleted


def revision(msg: Message) -> tuple[str, str] | None:
    """("edit" | "delete", the revised row's id) when the row revises an earlier one."""
    kind = msg.content.get(sessiondb.REVISION)
    target = msg.content.get(sessiondb.REVISES)
    if kind in ("edit", "delete") and isinstance(target, str) and target:
        return str(kind), target
    return None


def targets(pending: Iterable[Message]) -> set[str]:
    """The rows the pending revisions name that are not pending themselves: already read, or unknown."""
    rows = list(pending)
    ids = {m.id for m in rows}
    return {rev[1] for m in rows if (rev := revision(m)) is not None and rev[1] not in ids}


def fold(pending: list[Message], earlier: Mapping[str, Message], limit: int) -> Folded:
    """`pending`: every unread row, oldest first; `earlier`: the read rows their revisions name, by id."""
    entries: list[_Entry] = []
    unread: dict[str, _Entry] = {}
    notes: dict[str, _Entry] = {}
    for msg in pending:
        rev = revision(msg)
        if rev is None:
            unread[msg.id] = _Entry(msg)
            entries.append(unread[msg.id])
        elif rev[1] in unread:
            _revise(unread[rev[1]], msg, rev[0])
        else:
            entry = _note(msg, rev[0], rev[1], earlier.get(rev[1]), notes.get(rev[1]))
            if entry is not None:
                notes[rev[1]] = entry
                entries.append(entry)
    withdrawn = [s for e in entries if e.dropped for s in (e.message.seq, *e.riders)]
    live = [Row(e.message, tuple(e.riders), bool(e.note_of)) for e in entries if not (e.dropped or e.merged)]
    return Folded(window(live, limit), withdrawn)


def window(live: list[Row], limit: int) -> list[Row]:
    """At most `limit` rows, oldest first, always as far as the first row that asks for an answer: rows kept only
    as context (a group's chatter nobody addressed to the agent) never crowd it out, or it would wait for good. Notes
    about rows the agent read go with it (it may have acted on a message since deleted), the newest `limit` - 1 of
    them, then the newest chatter that fits; the rest rides with the first row sent, settled unseen."""
    if not limit:
        return live
    first = next((i for i, row in enumerate(live) if row.message.trigger), 0)
    if first < limit:
        return live[:limit]
    notes = [i for i in range(first) if live[i].note][1 - limit :] if limit > 1 else []
    room = limit - 1 - len(notes)
    chatter = [i for i in range(first) if not live[i].note][-room:] if room else []
    sent = sorted([*notes, *chatter, first])
    passed = tuple(s for i in range(first) if i not in sent for s in (live[i].message.seq, *live[i].riders))
    head = live[sent[0]]
    return [replace(head, riders=passed + head.riders), *(live[i] for i in sent[1:])]


def _revise(entry: _Entry, msg: Message, kind: str) -> None:
    """A revision of a row nobody has read: the row itself changes; the revision rides with it."""
    entry.riders.append(msg.seq)
    if kind == "delete":
        entry.dropped = True
    elif not entry.dropped:
        entry.message = replace(entry.message, content={**entry.message.content, "text": _text(msg)})


def _note(msg: Message, kind: str, target: str, original: Message | None, before: _Entry | None) -> _Entry | None:
    """A revision of a row already read: a note for the agent. Only the latest word on a row is said: a
    second edit replaces the first one's note, and a delete replaces an edit's (the edit is moot)."""
    if before is not None:
        if before.deletes:  # deleted is final
            before.riders.append(msg.seq)
            return None
        before.merged = True
    entry = _Entry(replace(msg, content={"text": note_text(msg, kind, original)}), note_of=target)
    entry.deletes = kind == "delete"
    if before is not None:
        entry.riders += [before.message.seq, *before.riders]
    return entry


def note_text(msg: Message, kind: str, original: Message | None) -> str:
    """What the agent is told about a revision of a message it has already read."""
    which = f"earlier message #{original.seq}" if original is not None else "earlier message"
    who = msg.sender_name or msg.sender_id or ""
    author = original.sender_name or original.sender_id if original is not None else None
    if kind == "edit":
        return f"{who or 'The sender'} edited their {which} to: {_text(msg)}"
    if not who:
        return f"The {which} was deleted; disregard it."
    if author and original is not None and original.sender_id != msg.sender_id:
        return f"{who} deleted {author}'s {which}; disregard it."
    return f"{who} deleted their {which}; disregard it."


def _text(msg: Message) -> str:
    text = msg.content.get("text")
    return text if isinstance(text, str) else ""
