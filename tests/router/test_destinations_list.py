"""`clawden destinations list` against the real router: an agent destination shows its hop limit (the default
when none was given), a chat destination none."""

from __future__ import annotations

from clawden.bus.events import DEFAULT_MAX_HOPS
from tests.router.conftest import RouterProcess
from tests.router.test_service import clawden


async def test_destinations_list_shows_each_agent_destinations_max_hops(router: RouterProcess) -> None:
    for args in (
        ("groups", "create", "writer"),
        ("groups", "create", "critic"),
        ("destinations", "add", "main", "--agent", "writer"),
        ("destinations", "add", "main", "--agent", "critic", "--max-hops", "2"),
        ("destinations", "add", "main", "family", "local", "terminal"),
    ):
        done = clawden(router, *args)
        assert done.returncode == 0, done.stderr
    listed = clawden(router, "destinations", "list", "--group", "main")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert "MAX HOPS" in header
    hops = {row.split()[1]: row.split()[5:7] for row in rows}
    assert hops["writer"] == [str(DEFAULT_MAX_HOPS), "(default)"]
    assert hops["critic"][0] == "2"
    assert hops["family"][0] == "-"
