"""A `clawden` write waiting for an admin, as the session folder keeps it for whichever runner holds the session
(services/runner/sessions.py, admin.py): its approval id commits to the session and the command, so a row the agent
changed is no write an admin was shown; the folder's record is written only by the runner its fence names, and a
runner the session moved away from no longer holds it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clawden import sessiondb
from services.runner import admin
from services.runner.sessions import (
    claim_folder,
    cli_writes_in,
    forget_cli_write,
    holds,
    prepare_folder,
    record_cli_write,
    told,
)

WIRE = ["wire", "add", "local", "room-1", "main"]


def test_an_approval_id_checks_out_only_for_the_session_and_command_it_was_made_for() -> None:
    approval = admin.write_id("s-1", WIRE, "0123456789abcdef")

    assert approval.startswith("cli-0123456789abcdef-") and len(approval) <= 64  # one subject token
    assert admin.checks_out(approval, "s-1", WIRE)
    assert not admin.checks_out(approval, "s-1", [*WIRE[:3], "room-2", "main"])  # the agent changed the row
    assert not admin.checks_out(approval, "s-2", WIRE)  # another session's
    assert not admin.checks_out(approval.replace("0123", "3210"), "s-1", WIRE)
    assert not admin.checks_out("na-s-1-0123", "s-1", WIRE)
    assert admin.write_id("s-1", WIRE, "fedcba9876543210") != approval


@pytest.fixture
def as_runner() -> Iterator[None]:
    sessiondb.write_as("a", follows_own=True)
    yield
    sessiondb.write_as(None)


def test_a_write_kept_in_the_folder_is_listed_until_forgotten_and_rows_not_commands_are_left_out(
    tmp_path: Path, as_runner: None
) -> None:
    folder = tmp_path / "s-1"
    claim_folder(folder, 1, "a")
    prepare_folder(folder, None)
    assert cli_writes_in(folder) == []  # a file made before the table: nothing kept, nothing fails
    first, second = admin.write_id("s-1", WIRE, "1" * 16), admin.write_id("s-1", ["members", "add"], "2" * 16)
    record_cli_write(folder, first, WIRE)
    record_cli_write(folder, second, ["members", "add"])
    record_cli_write(folder, first, ["other"])  # the same id again keeps the first
    with sessiondb.opened(folder / sessiondb.INBOUND) as conn:  # what the agent could write in
        conn.execute("INSERT INTO cli_writes VALUES ('cli-x', '{\"not\": \"argv\"}', 9e9)")
        conn.execute("INSERT INTO cli_writes VALUES ('cli-y', 'not json', 9e9)")

    assert cli_writes_in(folder) == [(first, WIRE), (second, ["members", "add"])]
    forget_cli_write(folder, first)
    assert cli_writes_in(folder) == [(second, ["members", "add"])]
    assert not told(folder, admin.outcome_key(second))


def test_a_runner_the_session_moved_away_from_neither_holds_it_nor_writes_its_record(
    tmp_path: Path, as_runner: None
) -> None:
    folder = tmp_path / "s-1"
    claim_folder(folder, 1, "a")
    prepare_folder(folder, None)
    approval = admin.write_id("s-1", WIRE, "1" * 16)
    record_cli_write(folder, approval, WIRE)
    assert holds(folder)

    sessiondb.write_as("b", follows_own=True)
    claim_folder(folder, 2, "b")  # the session moved to runner b
    sessiondb.write_as("a", follows_own=True)
    sessiondb.hold(folder, 1)

    assert not holds(folder)
    with pytest.raises(sessiondb.Fenced):
        forget_cli_write(folder, approval)
    with pytest.raises(sessiondb.Fenced):
        record_cli_write(folder, admin.write_id("s-1", WIRE, "2" * 16), WIRE)
    assert cli_writes_in(folder) == [(approval, WIRE)]  # still there for b
