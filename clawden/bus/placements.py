"""Where a session runs now: the router's last `SessionPlaced` on `subjects.placement(session)`, read from the
stream CLAWDEN_PLACEMENT (one message per subject) with a JetStream direct get, which any replica answers.

The vault reads it to know which runner may register a container token for the session. A reader's identity needs
`DIRECT_GET` in its grant. (A task's run is woken by the router itself, which knows where each session is.)"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from clawden.bus import events as ev
from clawden.bus import subjects

STREAM = "CLAWDEN_PLACEMENT"
# What a reader publishes to ask for one session's record (the subject names the session).
DIRECT_GET = f"$JS.API.DIRECT.GET.{STREAM}.{subjects.ALL_PLACEMENTS}"


async def placed(js: JetStreamContext, session_id: str) -> ev.SessionPlaced | None:
    """The session's placement, or None where the router published none (a session made before placements
    were recorded). A record that does not decode, or a stream that does not answer, raises: a reader must not
    take a guess for the record."""
    try:
        msg = await js.get_last_msg(STREAM, subjects.placement(session_id), direct=True)
    except NotFoundError:
        return None
    return ev.decoder_for(ev.SessionPlaced).decode(msg.data or b"")
