"""A group's tuning and an admin's commands in the agent runner, run as a host process with the real Claude
Code against the fake Anthropic API: what the model is sent, how many messages a prompt carries, and the
commands the runner answers without the model reading them."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawden import sessiondb
from tests.container import test_agent_runner as base
from tests.container.test_agent_runner import ROUTING, AgentProcess, Session, doorbell_ring
from tests.fakes.anthropic import FakeAnthropic, is_compaction

# The agent runner's own test fixtures: a fake API, a session folder, and the runner as a host process.
fake, session, start_agent = base.fake, base.session, base.start_agent


def skill(root: Path, name: str, description: str) -> None:
    folder = root / ".claude" / "skills" / name
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: {description}\n---\nAnswer briefly.\n")


def command(session: Session, word: str) -> int:
    """An admin's command row, as the host writes it from the router's wake."""
    seq, _ = sessiondb.insert_inbound(
        session.dir,
        sessiondb.InboundMessage(
            id=f"m-{word}", kind="chat", content={"text": f"/{word}", "command": word}, routing=ROUTING, sender_id="u1"
        ),
        outbound_max_seq=sessiondb.outbound_max_seq(session.dir),
    )
    doorbell_ring(session)
    return seq


def chat_only(session: Session, text: str) -> int:
    """A group's message nobody addressed to the agent, stored only for context, as the host writes it."""
    session._n += 1
    return session._insert(
        sessiondb.InboundMessage(
            id=f"m{session._n}", kind="chat", content={"text": text}, routing=ROUTING, sender_id="u2",
            sender_name="Bob", trigger=False,
        )
    )  # fmt: skip


def agent_turns(fake: FakeAnthropic) -> list[dict[str, Any]]:
    return [r.body for r in fake.messages_requests(with_tools=True) if not is_compaction(r.body)]


def test_effort_name_and_skills_reach_the_model(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    skills = tmp_path / "skills"
    skill(skills, "tide-tables", "Reads the QUOKKA-TIDE tables for the harbour")
    start_agent(CLAWDEN_EFFORT="max", CLAWDEN_ASSISTANT_NAME="Pip", CLAWDEN_SKILLS_DIR=str(skills))

    session.reply_to(session.send("when is high tide?"))

    [first, *_] = agent_turns(fake)
    assert first["output_config"]["effort"] == "max"
    system = json.dumps(first["system"])
    assert "You are Pip, a personal assistant" in system and "refer to yourself as Pip" in system
    assert "QUOKKA-TIDE" in json.dumps(first)


def test_without_tuning_the_model_gets_claude_codes_defaults_and_the_default_name(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    start_agent(CLAWDEN_SKILLS_DIR=str(tmp_path / "no-skills"))

    session.reply_to(session.send("hello"))

    [first, *_] = agent_turns(fake)
    assert first.get("output_config", {}).get("effort") != "max"  # Claude Code's own choice
    assert "You are Clawden, a personal assistant" in json.dumps(first["system"])
    assert "QUOKKA-TIDE" not in json.dumps(first)


def test_fifteen_waiting_messages_go_in_three_prompts_of_five(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    seqs = [session.send(f"note {n}") for n in range(15)]  # all waiting before the agent starts
    agent = start_agent(CLAWDEN_MAX_MESSAGES_PER_PROMPT="5")

    session.wait(lambda: all(session.acks().get(seq) == "completed" for seq in seqs) or None)

    # The runner sent three prompts of five, oldest first; the model's first turn opens with the first five (Claude
    # Code may merge prompts that queue behind a running turn into one request: on a loaded machine the second
    # is already queued before the first request goes out), and takes whole prompts only.
    log = agent.log.read_text()
    sent = [[int(s) for s in m.split(", ")] for m in re.findall(r"sent #\[([\d, ]+)\] as prompt", log)]
    assert sent == [seqs[0:5], seqs[5:10], seqs[10:15]]
    first = json.dumps(agent_turns(fake)[0]["messages"])
    shown = [int(s) for s in re.findall(r'<message seq=\\"(\d+)\\"', first)]
    assert shown[:5] == seqs[0:5] and shown in (seqs[0:5], seqs[0:10], seqs)


def test_context_and_files_are_answered_without_the_model(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    (session.group / "notes").mkdir()
    (session.group / "notes" / "shopping.txt").write_text("eggs\n" * 300)
    start_agent()
    session.reply_to(session.send("hello"))
    calls = len(fake.messages_requests())

    context = session.reply_to(command(session, "context")).content["text"]
    files = session.reply_to(command(session, "files")).content["text"]

    assert context.startswith("The conversation takes ") and " tokens of context" in context
    assert "Messages" in context and "System prompt" in context
    assert files.startswith("The workspace holds 2 files")
    assert "notes/shopping.txt (1.5 KiB)" in files and "CLAUDE.md (30 B)" in files
    assert len(fake.messages_requests()) == calls, "no model call for either"


def test_compact_has_claude_code_compact_the_conversation_and_tells_the_sizes(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    start_agent()
    for text in ("my cat is called Miso", "she likes boxes"):
        session.reply_to(session.send(text))

    seq = command(session, "compact")
    reply = session.reply_to(seq).content["text"]

    assert reply.startswith("Compacted the conversation: ") and " tokens down to " in reply
    assert session.acks()[seq] == "completed"
    assert sum(is_compaction(r.body) for r in fake.messages_requests()) == 1
    assert all("/compact" not in json.dumps(body["messages"][-1]) for body in agent_turns(fake))
    # The conversation goes on from the summary.
    after = session.reply_to(session.send("what is my cat called?"))
    assert "what is my cat called?" in after.content["text"]
    assert "The conversation so far." in json.dumps(agent_turns(fake)[-1]["messages"])


def test_a_mention_after_more_chatter_than_a_prompt_holds_is_answered_with_the_newest_as_context(
    session: Session, fake: FakeAnthropic, start_agent: Callable[..., AgentProcess]
) -> None:
    chatter = [chat_only(session, f"chatter {n}") for n in range(5)]
    mention = session.send("@Clawden what do you make of it?")
    start_agent(CLAWDEN_MAX_MESSAGES_PER_PROMPT="5")

    reply = session.reply_to(mention).content["text"]

    assert "what do you make of it?" in reply
    assert [f">chatter {n}</message>" in reply for n in range(5)] == [False, True, True, True, True]
    assert all(session.acks()[seq] == "completed" for seq in [*chatter, mention])
