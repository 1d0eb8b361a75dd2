"""Which inbound rows each prompt carried, and which rows a Claude Code result settles: the runner's
pure core, matched by the uuid each prompt is sent with, never by timing.

Claude Code echoes every prompt back (replay-user-messages) at the moment it takes the prompt into the
conversation, and each ResultMessage names the prompts its turn took in (`user_message_uuids`). A
prompt sent while a turn runs is either merged into that turn or queued into a later one; both show
up here the same way: replayed, then named by exactly one result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

NAMED_AT_MOST = 64  # ResultMessage.user_message_uuids lists no more


@dataclass
class Prompt:
    uuid: str
    seqs: list[int]
    anchor: int  # the newest triggering row: what the agent's replies are marked as answering
    taken: bool = False  # Claude Code took it into the conversation
    answered: bool = False  # the agent wrote to the chat after taking it in


@dataclass(frozen=True)
class Settled:
    prompts: list[Prompt]
    error: bool

    @property
    def seqs(self) -> list[int]:
        return [s for p in self.prompts for s in p.seqs]

    @property
    def anchor(self) -> int | None:
        return self.prompts[-1].anchor if self.prompts else None


@dataclass
class Ledger:
    open: dict[str, Prompt] = field(default_factory=dict)  # sent and not settled, in sending order
    _taken_since_result: list[str] = field(default_factory=list)

    @property
    def claimed(self) -> set[int]:
        return {s for p in self.open.values() for s in p.seqs}

    @property
    def busy(self) -> bool:
        return bool(self.open)

    @property
    def in_conversation(self) -> list[int]:
        """The rows of every prompt Claude Code has taken in and not settled: what a write to the chat answers."""
        return [s for p in self.open.values() if p.taken for s in p.seqs]

    def sent(self, uuid: str, seqs: list[int], anchor: int) -> Prompt:
        prompt = Prompt(uuid, list(seqs), anchor)
        self.open[uuid] = prompt
        return prompt

    def taken(self, uuid: str | None) -> Prompt | None:
        """A replayed user message: the prompt it names is now in the conversation (None: not ours)."""
        prompt = self.open.get(uuid or "")
        if prompt is None or prompt.taken:
            return None
        prompt.taken = True
        self._taken_since_result.append(prompt.uuid)
        return prompt

    def wrote_to_chat(self) -> None:
        """Whatever is in the conversation now has been answered, should Claude Code die before its result."""
        for prompt in self.open.values():
            if prompt.taken:
                prompt.answered = True

    def result(self, named: list[str], *, error: bool) -> Settled:
        """Settle what a result names. The CLI names at most 64: a full list also settles what this
        turn took in beyond it. A result that names none of ours is a turn the CLI started on its own."""
        extra = self._taken_since_result if len(named) >= NAMED_AT_MOST else []
        uuids = [u for u in dict.fromkeys([*named, *extra]) if u in self.open]
        self._taken_since_result = []
        return Settled([self.open.pop(u) for u in uuids], error)

    def lost(self) -> tuple[list[Prompt], list[Prompt], list[Prompt]]:
        """Claude Code died: (answered: done, taken but unanswered: failed, never taken: send again)."""
        prompts = list(self.open.values())
        self.open.clear()
        self._taken_since_result = []
        return (
            [p for p in prompts if p.answered],
            [p for p in prompts if p.taken and not p.answered],
            [p for p in prompts if not p.taken],
        )
