"""A file a person sends lands in the session's inbox, which the agent can write: the runner never writes (nor hands
to the agent's user) a host file through a link the agent planted there, whatever the message id it guessed."""

from __future__ import annotations

import os
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from clawden import sessiondb
from clawden.bus import events as ev
from clawden.config import Config
from clawden.runtime import ServiceContext
from services.runner.containers import Docker
from services.runner.service import Runner
from services.runner.sessions import SessionIndex, prepare_folder

ROUTE = ev.Route(channel="telegram", chat_id="42")
BOX = "telegram_42_7_main"  # the inbox folder of message telegram_42_7_main: the next id is easy to guess


def wake_with_file(url: str) -> ev.Wake:
    return ev.Wake(
        session_id="s-1",
        agent_group="main",
        route=ROUTE,
        message=ev.WakeMessage(
            id=BOX,
            kind="chat",
            text="here are my notes",
            attachments=(ev.Attachment(name="notes.txt", mime="text/plain", size=13, url=url),),
        ),
    )


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    index = await SessionIndex.start(tmp_path / "data" / "runner.db")
    ctx = types.SimpleNamespace(config=Config(home=str(tmp_path)), js=None, nc=None)  # no bus: its typing hint fails
    yield Runner(cast(ServiceContext, ctx), cast(Docker, None), index)
    await index.stop()
    sessiondb.write_as(None)  # the wake's claim holds the folder in this process


@pytest.fixture
def sent(tmp_path: Path) -> str:
    """The file as the Telegram bridge downloaded it, under the bridges' own folder."""
    fetched = tmp_path / "data" / "channels" / "telegram" / "files" / "7" / "notes.txt"
    fetched.parent.mkdir(parents=True)
    fetched.write_text("meeting notes")
    return f"file://{fetched}"


@pytest.fixture
def bashrc(tmp_path: Path) -> Path:
    home = tmp_path / "operator"
    home.mkdir()
    (home / ".bashrc").write_text("export PATH=/usr/bin\n")
    return home / ".bashrc"


def read(path: Path) -> str:
    return path.read_text()


def attachment(folder: Path) -> dict[str, Any]:
    [row] = sessiondb.inbound_by_id(folder, [BOX]).values()
    [described] = row.content["attachments"]
    return dict(described)


async def test_a_box_the_agent_made_a_link_to_a_host_folder_is_not_written_through(
    runner: Runner, tmp_path: Path, sent: str, bashrc: Path
) -> None:
    folder = tmp_path / "sessions" / "main" / "s-1"
    prepare_folder(folder, None)
    (bashrc.parent / "notes.txt").write_text("the operator's own notes")
    (folder / "inbox" / BOX).symlink_to(bashrc.parent)  # inside the container: ln -s <a host folder> inbox/<box>
    owner = (bashrc.parent / "notes.txt").stat().st_uid

    await runner.on_wake(wake_with_file(sent), cast(Any, None))

    assert read(bashrc.parent / "notes.txt") == "the operator's own notes"
    assert (bashrc.parent / "notes.txt").stat().st_uid == owner, "not handed to the agent's user either"
    assert sorted(os.listdir(bashrc.parent)) == [".bashrc", "notes.txt"], "nothing new in the host folder"
    described = attachment(folder)
    assert "path" not in described and "could not be saved" in described["error"]


async def test_a_file_name_the_agent_made_a_link_to_a_host_file_gets_the_file_in_its_place(
    runner: Runner, tmp_path: Path, sent: str, bashrc: Path
) -> None:
    folder = tmp_path / "sessions" / "main" / "s-1"
    prepare_folder(folder, None)
    (folder / "inbox" / BOX).mkdir()
    (folder / "inbox" / BOX / "notes.txt").symlink_to(bashrc)  # ln -s ~/.bashrc inbox/<box>/notes.txt

    await runner.on_wake(wake_with_file(sent), cast(Any, None))

    assert read(bashrc) == "export PATH=/usr/bin\n"
    saved = folder / "inbox" / BOX / "notes.txt"
    assert not saved.is_symlink() and read(saved) == "meeting notes"
    assert saved.stat().st_uid == (os.getuid() if runner.owner_uid is None else runner.owner_uid)
    assert attachment(folder)["path"] == f"inbox/{BOX}/notes.txt"
