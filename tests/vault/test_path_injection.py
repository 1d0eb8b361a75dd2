"""A secret that goes into the request path (`/bot{value}` for Telegram-style APIs): the agent sends a
placeholder segment, the site gets the real value, and nothing the site says about the path (a
redirect, an error quoting it, whole or percent-encoded, split across chunks) brings the value back."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import h11
import pytest

from services.vault.catalog import CatalogError, Secret, check_secret
from services.vault.injection import echoes, inject, path_substitution
from services.vault.policy import EchoScrubber
from tests.vault.conftest import RigFactory, secret
from tests.vault.sites import FakeUpstream, Received, Reply

pytestmark = pytest.mark.timeout(15)

TOKEN = "123456789:AAF-real_bot-token~xyz"
PLACEHOLDER = "PLACEHOLDER"


def bot(**kw: Any) -> tuple:  # type: ignore[type-arg]
    fields: dict[str, Any] = {"path_template": "/bot{value}"} | kw
    return (secret("tg", "generic", "api.example.test", TOKEN, **fields),)


# ---- pure pieces ----


@pytest.mark.parametrize(
    ("fields", "target", "expected"),
    [
        ({"path_template": "/bot{value}"}, b"/botX/getMe?offset=1", (f"/bot{TOKEN}/getMe?offset=1", "X")),
        ({"path_template": "/bot{value}"}, b"/botX", (f"/bot{TOKEN}", "X")),
        ({"path_template": "/bot{value}"}, b"/file/botX/doc.pdf", None),  # only at the start
        ({"path_template": "/bot{value}"}, b"/bot/getMe", None),  # an empty hole is no placeholder
        ({"path_template": "/v1/{value}/send"}, b"/v1/PH/send/now", (f"/v1/{TOKEN}/send/now", "PH")),
        ({"path_template": "/v1/{value}/send"}, b"/v1/PH/sendx", None),  # whole segments only
        (
            {"path_regex": r"^/(v\d)/key-[^/]+", "path_replacement": r"/\1/key-{value}"},
            b"/v2/key-PH/x",
            (f"/v2/key-{TOKEN}/x", "PH"),
        ),
        ({"path_regex": r"^/tok/[^/]+", "path_replacement": "/x/{value}"}, b"/tok/PH", (f"/x/{TOKEN}", "/tok/PH")),
    ],
)
def test_the_value_takes_the_placeholders_place_in_the_path(
    fields: dict[str, Any], target: bytes, expected: tuple[str, str] | None
) -> None:
    credential = secret("tg", "generic", "api.example.test", TOKEN, **fields)
    found = path_substitution(credential, target)
    assert found == (None if expected is None else (expected[0].encode(), expected[1].encode()))
    headers, rewritten = inject((credential,), [(b"accept", b"*/*")], target)
    assert headers == [(b"accept", b"*/*")]
    assert rewritten == (target if expected is None else expected[0].encode())


def test_echoes_pair_the_value_with_what_the_agent_sent() -> None:
    assert echoes(bot(), b"/botPH/getMe") == [(TOKEN.encode(), b"PH")]
    assert echoes(bot(), b"/other") == []
    header = secret("h", "generic", "api.example.test", TOKEN, header_name="X-Key")
    assert echoes((header,), b"/botPH") == [(TOKEN.encode(), b"clawden-managed")]


@pytest.mark.parametrize(
    ("fields", "value", "error"),
    [
        ({"path_template": "/bot{value}"}, "a/b", "cannot go into a path"),
        ({"path_template": "/bot{value}"}, "a%2Fb", "cannot go into a path"),
        ({"path_template": "/bot{value}"}, "a b", "cannot go into a path"),
        ({"path_template": "bot{value}"}, TOKEN, "starts with /"),
        ({"path_template": "/bot"}, TOKEN, "holds {value} once"),
        ({"path_template": "/{value}/{value}"}, TOKEN, "holds {value} once"),
        ({"path_template": "/b?t{value}"}, TOKEN, "not path characters"),
        ({"path_regex": "^/bot[^/]+"}, TOKEN, "needs --path-replacement"),
        ({"path_regex": "^/bot([^/]+", "path_replacement": "/bot{value}"}, TOKEN, "does not work"),
        ({"path_regex": "^/bot", "path_replacement": r"/\2{value}"}, TOKEN, "does not work"),
        ({"path_regex": "x" * 201, "path_replacement": "/{value}"}, TOKEN, "at most 200"),
        ({"path_template": "/bot{value}", "header_name": "X-Key"}, TOKEN, "needs one of"),
    ],
)
def test_a_path_secret_that_could_not_stay_one_segment_is_refused(
    fields: dict[str, str], value: str, error: str
) -> None:
    with pytest.raises(CatalogError, match=error.replace("?", r"\?").replace("{", r"\{").replace("}", r"\}")):
        check_secret(Secret(name="tg", kind="generic", host_pattern="api.example.test", **fields), value)  # type: ignore[arg-type]


def test_the_scrubber_turns_every_form_of_the_value_back_across_chunk_boundaries() -> None:
    encoded = quote(TOKEN, safe="").encode()
    lower_hex = encoded.replace(b"%3A", b"%3a")
    text = b"a " + TOKEN.encode() + b" b " + encoded + b" c " + lower_hex + b" d"
    whole = EchoScrubber([(TOKEN.encode(), b"PH")])
    assert whole.scrub(text) == b"a PH b PH c PH d"
    for cut in range(1, len(text)):
        stream = EchoScrubber([(TOKEN.encode(), b"PH")])
        assert stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.flush() == b"a PH b PH c PH d"
    assert not EchoScrubber([])


# ---- through the gateway ----


async def echo_path(request: Received, reply: Reply) -> None:
    """A site that, like many, quotes the path back: in a redirect, or in an error whose body comes in
    pieces (the value split across them) and once more percent-encoded."""
    target = request.target.decode()
    if target.endswith("/old"):
        location = f"https://api.example.test{target[:-4]}/new".encode()
        await reply.send(h11.Response(status_code=301, headers=[(b"location", location), (b"content-length", b"0")]))
        await reply.send(h11.EndOfMessage())
        return
    body = json.dumps({"ok": False, "description": f"Not Found: {target}", "raw": quote(target, safe="")}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await reply.send(h11.Response(status_code=404, headers=headers))
    if request.method != b"HEAD":
        middle = body.find(TOKEN.encode()) + 5 if TOKEN.encode() in body else len(body) // 2
        await reply.send(h11.Data(data=body[:middle]))
        await reply.send(h11.Data(data=body[middle:]))
    await reply.send(h11.EndOfMessage())


async def test_the_site_gets_the_value_in_the_path_and_the_agent_never_sees_it(
    rig: RigFactory, site: FakeUpstream
) -> None:
    site.respond = echo_path
    async with rig(bot()) as r, r.client() as http:
        missing = await http.get(f"https://api.example.test/bot{PLACEHOLDER}/getMe?offset=1")
        moved = await http.get(f"https://api.example.test/bot{PLACEHOLDER}/old")
        head = await http.head(f"https://api.example.test/bot{PLACEHOLDER}/getMe")
        elsewhere = await http.get(f"https://api.example.test/file/bot{PLACEHOLDER}/x")

    assert [x.target.decode() for x in site.received] == [
        f"/bot{TOKEN}/getMe?offset=1",
        f"/bot{TOKEN}/old",
        f"/bot{TOKEN}/getMe",
        f"/file/bot{PLACEHOLDER}/x",  # the template does not match: nothing injected
    ]
    assert missing.status_code == 404
    assert missing.json() == {
        "ok": False,
        "description": f"Not Found: /bot{PLACEHOLDER}/getMe?offset=1",
        "raw": quote(f"/bot{PLACEHOLDER}/getMe?offset=1", safe=""),
    }
    assert moved.status_code == 301
    assert moved.headers["location"] == f"https://api.example.test/bot{PLACEHOLDER}/new"
    assert head.status_code == 404 and "content-length" in head.headers
    seen_by_agent = [missing.text, moved.text, str(missing.headers), str(moved.headers), elsewhere.text]
    assert all(TOKEN not in text and quote(TOKEN, safe="") not in text for text in seen_by_agent)
    assert [a.injected for a in r.audit] == [("tg",), ("tg",), ("tg",), ()]
    assert all(TOKEN not in a.path for a in r.audit)
