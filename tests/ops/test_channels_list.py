"""How `clawden channels list` shows a bridge that runs but says it cannot do its work (its ping's `trouble`)."""

from __future__ import annotations

from typing import Any

from clawden.cli.commands.channels import listing

TROUBLE = (
    "Discord refuses the bridge's credentials since 21:14 (Discord closed the Gateway with 4004: the token was "
    "refused); nothing comes in or goes out until they are mended: put the bot token in keys/discord"
)
BRIDGES = {"discord": "clawden 1.0", "telegram": "clawden 1.0", "slack": "clawden 1.0"}


def ping(**more: Any) -> dict[str, Any]:
    return {"name": "channel-x", "pid": 4242, "uptime": 90.0, "ready": True, "stats": {}, **more}


def test_a_bridge_with_trouble_is_degraded_and_its_trouble_is_the_line_under_it() -> None:
    lines = listing(BRIDGES, {"discord": ping(trouble=TROUBLE), "telegram": ping(trouble="")})

    assert lines[0].split()[:3] == ["discord", "clawden", "1.0"] and " degraded  pid 4242" in lines[0]
    assert lines[1].strip() == TROUBLE and lines[1].startswith(" " * 12)
    assert " running  pid 4242" in lines[3] and lines[3].startswith("telegram")
    assert lines[2].startswith("slack") and lines[2].endswith("not running") and len(lines) == 4


def test_a_bridge_without_trouble_or_from_before_it_runs_with_no_line_under_it() -> None:
    lines = listing(BRIDGES, {"discord": ping(), "slack": ping(trouble="")})

    assert [line.split()[3] for line in lines] == ["running", "running", "not"]


def test_a_bridge_that_does_not_answer_or_no_bus_says_so_without_a_trouble_line() -> None:
    assert listing(BRIDGES, {"discord": ping(error="timeout", trouble=TROUBLE)})[0].endswith("not answering (timeout)")
    assert all(line.endswith("unknown (NATS unreachable)") for line in listing(BRIDGES, None))
    assert listing({}, {}) == ["no chat bridges are installed"]
