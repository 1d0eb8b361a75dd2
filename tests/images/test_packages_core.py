"""The packages of a group's own image as tables: the names a request may give, the tag, what an image's labels
record, the Dockerfile, whose image a group may build on (clawden/packagespec.py), and how the in-container
`clawden groups packages add` (install_packages) parses and is allowed (services/runner/scope.py)."""

from __future__ import annotations

import pytest

from clawden.cli.doctor import rebuild_fix
from clawden.mcpservers import McpServer
from clawden.packagespec import (
    GROUP_LABEL,
    PACKAGES_LABEL,
    Packages,
    apt_needed,
    base_problem,
    dockerfile,
    image_tag,
    labels_packages,
    problem,
    tag_name,
)
from services.runner.scope import BadCommand, Write, allow, mcp_server, packages, parse

JQ = Packages(apt=("jq",))

PROBLEMS = [
    (JQ, ""),
    (Packages(apt=("libc6", "g++", "python3.11")), ""),
    (Packages(npm=("@scope/tool@1.2.3", "left-pad")), ""),
    (Packages(pip=("requests==2.31.0", "uvicorn[standard]", "PyYAML")), ""),
    (Packages(apt=("-o",)), "'-o' is not a apt package name"),
    (Packages(apt=("jq;rm",)), "'jq;rm' is not a apt package name"),
    (Packages(npm=("../x",)), "'../x' is not a npm package name"),
    (Packages(pip=("--index-url=http://x",)), "'--index-url=http://x' is not a pip package name"),
    (Packages(pip=("a @ file:///etc",)), "'a @ file:///etc' is not a pip package name"),
    (Packages(apt=tuple(f"p{i}" for i in range(65))), "at most 64 apt packages, not 65"),
]


@pytest.mark.parametrize(("packages", "why"), PROBLEMS)
def test_only_package_names_may_be_asked_for(packages: Packages, why: str) -> None:
    assert problem(packages) == why


SETS = [
    (Packages(apt=("jq",)), Packages(apt=("curl", "jq"), pip=("x",)), Packages(apt=("curl", "jq"), pip=("x",))),
    (Packages(apt=("b", "a")), Packages(), Packages(apt=("a", "b"))),
]


@pytest.mark.parametrize(("have", "more", "union"), SETS)
def test_adding_packages_keeps_one_sorted_set(have: Packages, more: Packages, union: Packages) -> None:
    assert have.plus(more) == union
    assert union.minus(more) == Packages(apt=tuple(n for n in union.apt if n not in more.apt))
    assert have.missing(more) == Packages(
        *(tuple(n for n in getattr(more, k) if n not in getattr(have, k)) for k in ("apt", "npm", "pip"))
    )


def test_words_say_what_is_in_a_set() -> None:
    assert Packages(apt=("jq", "curl"), pip=("x",)).words() == "apt jq, curl; pip x"
    assert Packages().words() == "nothing" and Packages().empty() and not JQ.empty()


TAGS = [("main", "main"), ("Ops Team", "ops-team"), ("..", "group"), ("a" * 80, "a" * 60)]


@pytest.mark.parametrize(("group", "name"), TAGS)
def test_a_groups_name_becomes_a_tag_docker_takes(group: str, name: str) -> None:
    assert tag_name(group) == name


def test_the_tag_is_the_same_for_the_same_base_and_packages_only() -> None:
    tag = image_tag("main", "sha256:1", JQ)
    assert tag.startswith("clawden-agent:main-") and len(tag) == len("clawden-agent:main-") + 12
    assert image_tag("main", "sha256:1", Packages(apt=("jq",))) == tag
    assert len({tag, image_tag("main", "sha256:2", JQ), image_tag("main", "sha256:1", Packages(apt=("curl",)))}) == 3
    assert image_tag("ops", "sha256:1", JQ) != tag


LABELS = [
    (None, Packages()),
    ({GROUP_LABEL: "ops", PACKAGES_LABEL: '{"apt": ["jq"]}'}, Packages()),  # another group's image
    ({GROUP_LABEL: "main", PACKAGES_LABEL: '{"apt": ["jq"]}'}, JQ),
    ({GROUP_LABEL: "main", PACKAGES_LABEL: "not json"}, Packages()),
    ({GROUP_LABEL: "main", PACKAGES_LABEL: '{"apt": "jq", "x": 1}'}, Packages()),
    ({GROUP_LABEL: "main"}, Packages()),
]


@pytest.mark.parametrize(("labels", "packages"), LABELS)
def test_an_image_records_its_groups_packages_in_its_labels(labels: dict[str, str] | None, packages: Packages) -> None:
    assert labels_packages(labels, "main") == packages


def test_the_build_takes_only_what_the_base_lacks_and_no_virtual_packages() -> None:
    closure = ["jq", "libjq1", "libc6", "<libonig5-virtual>", "libonig5", "", "libgcc-s1:amd64"]
    assert apt_needed(closure, {"libc6", "libgcc-s1"}) == ["jq", "libjq1", "libonig5"]


DOCKERFILES = [
    (JQ, ("SourceParts=/dev/null /tmp/clawden-debs/*.deb",), ("npm install", "pip install")),
    (Packages(npm=("x",)), ("npm install --global --offline",), ("apt-get install", "pip install")),
    (Packages(pip=("x",)), ("--no-index", "-c /tmp/clawden-agent-pins.txt"), ("apt-get install", "npm install")),
]


@pytest.mark.parametrize(("packages", "has", "lacks"), DOCKERFILES)
def test_the_dockerfile_installs_from_the_context_alone(
    packages: Packages, has: tuple[str, ...], lacks: tuple[str, ...]
) -> None:
    text = dockerfile(packages)
    assert text.startswith("ARG BASE\nFROM ${BASE}\nUSER 0:0\n") and text.endswith("USER 1000:1000\n")
    assert all(h in text for h in has) and not any(x in text for x in lacks)
    assert "apt-get update" not in text and "apt-get download" not in text  # nothing fetched in the build


BASES = [
    ("", None, ""),
    ("clawden-agent:latest", None, ""),
    ("clawden-agent:main-abc", {GROUP_LABEL: "main"}, ""),
    ("custom:1", None, "agent group main runs its own image custom:1"),
    ("clawden-agent:ops-abc", {GROUP_LABEL: "ops"}, "agent group main runs its own image clawden-agent:ops-abc"),
]


@pytest.mark.parametrize(("setting", "labels", "why"), BASES)
def test_packages_build_on_the_runners_image_never_over_a_groups_own(
    setting: str, labels: dict[str, str] | None, why: str
) -> None:
    assert base_problem("main", setting, labels, "clawden-agent:latest").startswith(why)
    assert bool(why) == bool(base_problem("main", setting, labels, "clawden-agent:latest"))


# --- the in-container command (install_packages sends it) ---------------------------------------------


def test_install_packages_parses_as_the_owners_cli_spells_it() -> None:
    argv = ["groups", "packages", "add", ".", "--apt", "jq", "--apt=curl", "--pip", "x==1", "--reason", "why"]
    command = parse(argv)
    assert command.name == "groups packages add"
    assert command.args == {"agent_group": ".", "--apt": "jq\x00curl", "--pip": "x==1", "--reason": "why"}
    assert packages(command.args) == Packages(apt=("jq", "curl"), pip=("x==1",))


BAD = [
    (["groups", "packages", "add", "main", "--reason", "x"], "needs a package"),
    (["groups", "packages", "add", "main", "--apt", "-o=x"], "'-o=x' is not a apt package name"),
    (["groups", "packages", "add", "main", "--apt", "a,--b"], "'a,--b' is not a apt package name"),
    (["groups", "mcp", "add", "main", "t"], "give the command that starts it"),
    (["groups", "mcp", "add", "main", "t", "--command", "x", "--env", "A"], "--env takes NAME=VALUE"),
    (["groups", "mcp", "add", "main", "clawden", "--command", "x"], "the agent runner's own tools"),
    (["groups", "mcp", "add", "main", "t", "--command", "x", "--env", "HTTPS_PROXY=http://x"], "the agent runner sets"),
    (["groups", "packages", "add", "main", "--deb", "x"], "unknown option --deb"),
]


@pytest.mark.parametrize(("argv", "error"), BAD)
def test_a_bad_package_request_is_refused_before_any_admin_is_asked(argv: list[str], error: str) -> None:
    with pytest.raises(BadCommand, match=error):
        parse(argv)


def test_the_dot_is_the_callers_own_group_and_the_card_says_what_and_why() -> None:
    command = parse(["groups", "packages", "add", ".", "--apt", "jq", "--reason", "to read JSON"])
    verdict = allow("group", "main", command)
    assert isinstance(verdict, Write)
    assert verdict.command.args["agent_group"] == "main"
    assert "Agent group main's image would be rebuilt with apt jq" in verdict.change
    assert verdict.change.endswith("The agent's reason: to read JSON")
    other = allow("group", "main", parse(["groups", "packages", "add", "ops", "--apt", "jq"]))
    assert getattr(other, "reason", "") == "agent group main may only see and change its own group, not ops"
    unexplained = allow("group", "main", parse(["groups", "packages", "add", "main", "--npm", "x"]))
    assert isinstance(unexplained, Write) and unexplained.change.endswith("(none given)")


def test_add_mcp_server_parses_keeps_each_argument_and_shows_the_admin_what_would_run() -> None:
    argv = ["groups", "mcp", "add", ".", "tickets", "--command=python3", "--arg=/workspace/agent/t.py", "--arg=--port"]
    argv += ["--arg", "a,b", "--env=API=https://t.example", "--env", "TOKEN=clawden-managed", "--reason", "tickets"]
    command = parse(argv)
    assert mcp_server(command.args) == McpServer(
        command="python3",
        args=("/workspace/agent/t.py", "--port", "a,b"),
        env={"API": "https://t.example", "TOKEN": "clawden-managed"},
    )
    verdict = allow("group", "main", command)
    assert isinstance(verdict, Write)
    assert verdict.command.line() == (
        "clawden groups mcp add main tickets --command python3 --arg /workspace/agent/t.py --arg=--port"
        " --arg a,b --env API=https://t.example --env TOKEN=clawden-managed --reason tickets"
    )
    assert verdict.change == (
        "Agent group main would get the MCP server 'tickets', run in its containers as python3"
        " /workspace/agent/t.py --port a,b\n  API=https://t.example\n  TOKEN=clawden-managed\n"
        "This session's container restarts with it. The agent's reason: tickets"
    )
    bare = allow("group", "main", parse(["groups", "mcp", "add", "main", "t", "--command", "x"]))
    assert isinstance(bare, Write) and mcp_server(bare.command.args) == McpServer(command="x")
    assert bare.change.endswith("(none given)")


def test_doctor_says_to_rebuild_a_groups_image_through_its_group_and_the_agent_image_with_image_build() -> None:
    assert rebuild_fix("clawden-agent:main-abc", {GROUP_LABEL: "main"}) == "clawden groups restart main --rebuild"
    assert rebuild_fix("clawden-agent:latest", {}) == "clawden image build --tag clawden-agent:latest"
