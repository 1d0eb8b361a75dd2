"""A rule on a path holds however the agent escapes its reserved characters: servers decode `%3A` and
`%24` before they route, so the gateway's rules see them decoded too, while the site gets the path as sent."""

from __future__ import annotations

import pytest

from tests.vault.conftest import RigFactory, rule
from tests.vault.sites import FakeUpstream

pytestmark = pytest.mark.timeout(15)

RULES = (
    rule("no-predict", "block", "api.example.test", path_pattern="/v1/models/*:predict"),
    rule("no-batch", "block", "api.example.test", path_pattern="/v1.0/$batch"),
)


@pytest.mark.parametrize("path", ["/v1/models/m%3Apredict", "/v1/models/m%3apredict", "/v1.0/%24batch"])
async def test_an_escaped_reserved_character_does_not_pass_a_block(
    rig: RigFactory, site: FakeUpstream, path: str
) -> None:
    async with rig(rules=RULES) as r, r.client() as http:
        refused = await http.post(f"https://api.example.test{path}", content=b"{}")

    assert refused.status_code == 403
    assert site.received == []


async def test_an_escaped_path_no_rule_names_goes_out_as_sent(rig: RigFactory, site: FakeUpstream) -> None:
    async with rig(rules=RULES) as r, r.client() as http:
        passed = await http.get("https://api.example.test/v1/models/m%3Ainfo")

    assert passed.status_code == 200
    assert site.received[0].target == b"/v1/models/m%3Ainfo"
