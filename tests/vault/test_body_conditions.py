"""A body condition cannot be passed by how the body is labelled: a second Content-Encoding behind an
`identity`, or a form field that makes a POST act as another method."""

from __future__ import annotations

import gzip

import pytest

from services.vault.catalog import Condition
from tests.vault.conftest import RigFactory, rule
from tests.vault.sites import FakeUpstream

pytestmark = pytest.mark.timeout(15)


async def test_a_second_content_encoding_does_not_skip_a_body_condition(rig: RigFactory, site: FakeUpstream) -> None:
    no_opus = rule("no-opus", "block", "api.example.test", conditions=(Condition(operator="contains", value="opus"),))
    headers = [("content-type", "application/json"), ("content-encoding", "identity"), ("content-encoding", "gzip")]
    async with rig(rules=(no_opus,)) as r, r.client() as http:
        refused = await http.post(
            "https://api.example.test/v1/messages", content=gzip.compress(b'{"model":"opus"}'), headers=headers
        )

    assert refused.status_code == 403
    assert site.received == []


async def test_a_form_posts_method_field_is_held_to_a_rule_on_that_method(rig: RigFactory, site: FakeUpstream) -> None:
    no_deletes = rule("no-deletes", "block", "api.example.test", method="DELETE")
    async with rig(rules=(no_deletes,)) as r, r.client() as http:
        refused = await http.post("https://api.example.test/posts/1", data={"_method": "DELETE"})
        edited = await http.post("https://api.example.test/posts/1", data={"title": "x"})

    assert refused.status_code == 403
    assert edited.status_code == 200
    assert [x.body for x in site.received] == [b"title=x"]
