"""The runner's control verbs: `clawden.ctl.runner.containers` for `clawden status`, and
`clawden.ctl.runner.restart` for `clawden groups restart`."""

from __future__ import annotations

from typing import Literal

from clawden.bus import subjects
from clawden.bus.ctl.verb import Nothing, Reply, Request, declare

SERVICE = "runner"


# draining: asked to finish what its agent was given and give its slot to a chat that waits (SIGUSR1)
ContainerState = Literal["starting", "running", "draining", "stopping"]


class Running(Reply, frozen=True):
    session_id: str
    agent_group: str
    container: str  # the container id's first 12 characters; "" while it starts
    state: ContainerState
    idle: float  # seconds since the session last did something
    mcp_failed: dict[str, str] = {}  # the group's MCP servers its agent runs without, and why


class Waiting(Reply, frozen=True):
    session_id: str
    agent_group: str
    waiting: float  # seconds in the queue for a slot


class Containers(Reply, frozen=True):
    runner: str
    max: int
    running: list[Running]
    waiting: list[Waiting]
    # The runner's host, as its heartbeat says it (services/runner/heartbeat.py); 0 / -1 from an older runner.
    cpus: int = 0
    load: float = 0.0  # 1-minute load average
    memory_available: int = -1  # bytes, -1 unknown


CONTAINERS = declare(SERVICE, "containers", Nothing, Containers)


class Restart(Request, frozen=True):
    """Stop the group's running containers; each conversation continues at its next message, in a container
    started from the group's current settings (its image after `clawden groups packages add`)."""

    agent_group: str


class Restarted(Reply, frozen=True):
    stopped: int


RESTART = declare(SERVICE, "restart", Restart, Restarted)

# Each runner also answers these at its own subject, `clawden.ctl.runner.<id>.<verb>`: the shared one is a
# queue group that reaches one runner of many, so a caller that wants all of them (status, a restart) finds
# each by micro discovery and asks it there (`control.ask_all`).
PER_RUNNER = (CONTAINERS, RESTART)


def at_runner(runner_id: str, verb_name: str) -> str:
    """The runner `runner_id`'s own subject for one of its verbs."""
    return f"{subjects.ctl(SERVICE, runner_id)}.{subjects.token(verb_name)}"
