"""What `docker info` says that changes how agent containers are made (`agentcontainer.Engine`)."""

from __future__ import annotations

import os

from clawden.agentcontainer import AGENT_UID, Engine, container_user

# Abridged from Docker 20.10's `docker info` on this kind of host: rootful, and rootless without cgroups.
ROOTFUL = {
    "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
    "NCPU": 2,
    "SecurityOptions": ["name=seccomp,profile=default"],
    "MemoryLimit": True,
    "PidsLimit": True,
}
ROOTLESS = ROOTFUL | {
    "SecurityOptions": ["name=seccomp,profile=default", "name=rootless"],
    "MemoryLimit": False,
    "PidsLimit": False,
}


def test_a_rootful_engine_holds_limits_and_is_not_rootless() -> None:
    assert Engine.from_info(ROOTFUL) == Engine("Debian GNU/Linux 12 (bookworm)", 2, rootless=False, limits=True)


def test_a_rootless_engine_without_cgroups_says_so() -> None:
    engine = Engine.from_info(ROOTLESS)
    assert (engine.rootless, engine.limits) == (True, False)


# `dockerd --userns-remap=default`'s SecurityOptions (Docker 20.10).
REMAPPED = ROOTFUL | {"SecurityOptions": ["name=seccomp,profile=default", "name=userns"]}


def test_an_engine_that_remaps_users_says_so() -> None:
    assert (Engine.from_info(REMAPPED).remapped, Engine.from_info(ROOTFUL).remapped) == (True, False)


def test_containers_of_a_remapped_engine_run_in_the_host_user_namespace_and_others_in_the_engines_own() -> None:
    modes = [Engine.from_info(info).userns_mode for info in (REMAPPED, ROOTFUL, ROOTLESS)]
    assert modes == ["host", None, None]


def test_an_engine_that_says_little_is_taken_for_a_plain_linux_one() -> None:
    assert Engine.from_info({"NCPU": 0, "SecurityOptions": None}) == Engine()


def test_containers_of_a_rootless_engine_run_as_its_user_who_is_their_root() -> None:
    assert container_user(rootless=True) == ("0:0", None)
    expected = (f"{AGENT_UID}:{AGENT_UID}", AGENT_UID) if os.getuid() == 0 else (f"{os.getuid()}:{os.getgid()}", None)
    assert container_user() == expected
