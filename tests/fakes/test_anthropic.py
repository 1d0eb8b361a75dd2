"""The fake Anthropic API speaks the Messages wire format the real clients parse."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.eventually import eventually
from tests.fakes.anthropic import (
    AFTER_TOOL_TEXT,
    AUX_TEXT,
    Error,
    FakeAnthropic,
    Hang,
    Text,
    ToolCall,
    start_in_thread,
)

SEND = "mcp__clawden__send_message"
TOOLS = [{"name": SEND, "description": "send", "input_schema": {"type": "object"}}]
HEADERS = {"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = await FakeAnthropic().start()
    yield server
    await server.stop()


@pytest.fixture
async def client(fake: FakeAnthropic) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.url, headers=HEADERS, timeout=10) as c:
        yield c


def body(
    text: str | list[dict[str, str]] = "hi", *, tools: bool = True, stream: bool = False, **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }
    if tools:
        out["tools"] = TOOLS
    return out


async def read_sse(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def assert_official_order(events: list[tuple[str, dict[str, Any]]]) -> None:
    """message_start; per block start → deltas → stop, indexes rising; message_delta; message_stop."""
    names = [n for n, _ in events if n != "ping"]
    assert all(n == data["type"] for n, data in events)
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    open_index: int | None = None
    next_index = 0
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == next_index
            open_index = next_index
        elif name == "content_block_delta":
            assert data["index"] == open_index
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index, next_index = None, next_index + 1
        else:
            assert name == "ping"
    assert open_index is None and next_index >= 1


async def test_stream_of_scripted_text_follows_the_official_event_order(
    fake: FakeAnthropic, client: httpx.AsyncClient
) -> None:
    fake.script(Text("Hello there, this text spans several deltas."))

    async with client.stream("POST", "/v1/messages", json=body(stream=True)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await read_sse(response)

    assert_official_order(events)
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["content"] == [] and start["model"] == "claude-test"
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "Hello there, this text spans several deltas."
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert events[-2][1]["usage"]["output_tokens"] > 0


async def test_scripted_tool_call_round_trips_through_the_stream(
    fake: FakeAnthropic, client: httpx.AsyncClient
) -> None:
    fake.script(ToolCall("send_message", {"text": "hi", "to": "current"}, text="Let me answer."))

    async with client.stream("POST", "/v1/messages", json=body(stream=True)) as response:
        events = await read_sse(response)

    assert_official_order(events)
    starts = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in starts] == ["text", "tool_use"]
    tool_use = starts[1]
    assert tool_use["name"] == SEND and tool_use["input"] == {}  # resolved from the suffix
    partial = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial) == {"text": "hi", "to": "current"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    follow_up = body(stream=True)
    follow_up["messages"] += [
        {"role": "assistant", "content": [dict(tool_use, input={"text": "hi", "to": "current"})]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use["id"], "content": "sent as #3"}]},
    ]
    async with client.stream("POST", "/v1/messages", json=follow_up) as response:
        events = await read_sse(response)
    assert_official_order(events)
    assert events[-2][1]["delta"]["stop_reason"] == "end_turn"
    assert "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta") == AFTER_TOOL_TEXT


async def test_default_echoes_through_send_message_and_answers_auxiliary_calls_with_text(
    client: httpx.AsyncClient,
) -> None:
    user_turn = [
        {"type": "text", "text": "<system-reminder>context</system-reminder>"},
        {"type": "text", "text": "what's up?"},
    ]
    agent = (await client.post("/v1/messages", json=body(user_turn))).json()
    aux = (await client.post("/v1/messages", json=body("title this", tools=False))).json()

    assert agent["type"] == "message" and agent["stop_reason"] == "tool_use"
    assert agent["content"][0]["type"] == "tool_use"
    assert agent["content"][0]["name"] == SEND
    assert agent["content"][0]["input"] == {"text": "echo: what's up?"}
    assert aux["stop_reason"] == "end_turn" and aux["content"] == [{"type": "text", "text": AUX_TEXT}]


async def test_script_is_kept_for_agent_turns_and_plays_in_order(
    fake: FakeAnthropic, client: httpx.AsyncClient
) -> None:
    fake.script(Text("one"), Error(529, "busy"))

    aux = await client.post("/v1/messages", json=body(tools=False))
    first = await client.post("/v1/messages", json=body())
    second = await client.post("/v1/messages", json=body())
    third = await client.post("/v1/messages", json=body())

    assert aux.json()["content"][0]["text"] == AUX_TEXT
    assert first.json()["content"][0]["text"] == "one"
    assert second.status_code == 529
    assert second.json() == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert third.json()["content"][0]["type"] == "tool_use"
    assert fake.pending_script == 0


async def test_unknown_paths_get_anthropic_shaped_404_and_count_tokens_answers(
    fake: FakeAnthropic, client: httpx.AsyncClient
) -> None:
    missing = await client.get("/v1/files")
    counted = await client.post("/v1/messages/count_tokens", json=body())

    assert missing.status_code == 404
    assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "not_found_error"
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
    assert [(r.method, r.path) for r in fake.requests] == [("GET", "/v1/files"), ("POST", "/v1/messages/count_tokens")]
    assert fake.requests[1].headers["x-api-key"] == "sk-test"
    assert fake.connections == 1  # keep-alive


async def test_the_model_list_checks_the_key_as_the_api_does(fake: FakeAnthropic, client: httpx.AsyncClient) -> None:
    fake.api_keys = {"sk-test", "sk-ant-oat01-token"}
    oauth = {"authorization": "Bearer sk-ant-oat01-token", "anthropic-version": "2023-06-01"}

    listed = await client.get("/v1/models", params={"limit": 1})
    wrong = await client.get("/v1/models", headers={"x-api-key": "sk-wrong"})
    bearer = await client.get("/v1/models", headers={**oauth, "x-api-key": "", "anthropic-beta": "oauth-2025-04-20"})
    no_beta = await client.get("/v1/models", headers={**oauth, "x-api-key": ""})

    assert listed.status_code == 200
    page = listed.json()
    assert [m["type"] for m in page["data"]] == ["model"] and page["first_id"] == page["last_id"] == "claude-fake-1"
    assert page["has_more"] is True
    assert wrong.status_code == 401
    assert wrong.json() == {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}
    assert bearer.status_code == 200 and len(bearer.json()["data"]) == 2
    assert no_beta.json()["error"]["message"] == "OAuth authentication is currently not supported."


async def test_hang_holds_the_request_until_released(fake: FakeAnthropic, client: httpx.AsyncClient) -> None:
    fake.script(Hang(then=Text("late")))

    pending = asyncio.create_task(client.post("/v1/messages", json=body()))
    await eventually(lambda: fake.requests)  # it arrived: from here on it is held, not on its way
    assert not pending.done() and len(fake.requests) == 1
    fake.release()
    response = await asyncio.wait_for(pending, 5)

    assert response.json()["content"][0]["text"] == "late"


def test_fake_runs_in_a_thread_for_synchronous_callers() -> None:
    fake = start_in_thread()
    try:
        fake.script(Text("from a thread"))
        response = httpx.post(f"{fake.url}/v1/messages", json=body(), headers=HEADERS, timeout=5)
        assert response.json()["content"][0]["text"] == "from a thread"
    finally:
        fake.stop_thread()
