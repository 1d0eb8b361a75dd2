"""`clawden units install --now`: the order it starts in, and what it says of the units that did not start, read
from `systemctl show` as systemd 252 prints it. (Under real systemd, with a bridge whose token is refused:
test_pid1_user.py.)"""

from __future__ import annotations

from pathlib import Path

from clawden.cli import units
from tests.units.conftest import install_for

KEYS = Path("/home/alice/.clawden/keys")

# `systemctl --user show -p SHOWN clawden.target clawden-router.service clawden-channel@telegram.service
# clawden-channel@telegram.path` after a start where Telegram refused the bridge's token (systemd 252).
SHOWN_AFTER_A_REFUSED_TOKEN = """\
Id=clawden.target
ActiveState=active
SubState=active

Result=success
ExecMainStartTimestamp=Sat 2024-12-07 04:50:11 UTC
ExecMainStatus=0
SyslogIdentifier=clawden-router
Id=clawden-router.service
ActiveState=active
SubState=running

Result=exit-code
ExecMainStartTimestamp=Sat 2024-12-07 04:50:12 UTC
ExecMainStatus=78
SyslogIdentifier=clawden-channel-telegram
Id=clawden-channel@telegram.service
ActiveState=failed
SubState=failed

Result=success
Id=clawden-channel@telegram.path
ActiveState=active
SubState=waiting
"""
REFUSED = (
    "channel@telegram cannot run as configured: Telegram rejected the bot token (401 Unauthorized); put the token "
    "@BotFather gave you in keys/telegram (mode 0600) or CLAWDEN_TELEGRAM_TOKEN"
)


def down(shown: str) -> list[units.UnitState]:
    return [u for u in units.unit_states(shown) if u.active != "active"]


def test_systemctl_show_is_read_unit_by_unit_whatever_properties_a_unit_lacks() -> None:
    states = units.unit_states(SHOWN_AFTER_A_REFUSED_TOKEN)
    assert [(u.name, u.active) for u in states] == [
        ("clawden.target", "active"),
        ("clawden-router.service", "active"),
        ("clawden-channel@telegram.service", "failed"),
        ("clawden-channel@telegram.path", "active"),
    ]
    bridge = states[2]
    assert (bridge.result, bridge.status, bridge.identifier) == ("exit-code", 78, "clawden-channel-telegram")
    assert bridge.started_at == "Sat 2024-12-07 04:50:12 UTC"
    assert [u.channel for u in states] == ["", "", "telegram", "telegram"]


def test_a_bridge_that_did_not_start_is_said_with_its_own_words_and_the_fix_and_fails_nothing() -> None:
    failed = down(SHOWN_AFTER_A_REFUSED_TOKEN)
    said, error = units.not_started(failed, {"clawden-channel@telegram.service": REFUSED}, "user", KEYS)
    assert said == [
        f"  clawden-channel@telegram.service did not start: {REFUSED}",
        "  the rest runs without it; `clawden doctor` checks its credential, and once "
        "/home/alice/.clawden/keys/telegram holds one that works, clawden-channel@telegram.path starts it",
    ]
    assert error == ""


def test_without_its_journal_a_bridge_that_exited_78_is_said_in_systemds_words() -> None:
    said, _ = units.not_started(down(SHOWN_AFTER_A_REFUSED_TOKEN), {}, "user", KEYS)
    assert said[0] == (
        "  clawden-channel@telegram.service did not start: it exited 78: it cannot run as configured "
        "(its journal says why)"
    )


def test_a_core_service_that_did_not_start_fails_the_install_and_the_bridges_are_still_said() -> None:
    crashed = units.UnitState("clawden-router.service", "activating", "auto-restart", "exit-code", 1)
    bridge = units.UnitState("clawden-channel@telegram.service", "failed", "failed", "exit-code", 78)
    said, error = units.not_started([crashed, bridge], {bridge.name: REFUSED}, "system", KEYS)
    assert said[0] == f"  clawden-channel@telegram.service did not start: {REFUSED}"
    assert error.splitlines() == [
        "installed and enabled, but Clawden's core did not start:",
        "  clawden-router.service did not start: it exited 1",
        "see `systemctl status 'clawden*'` and `journalctl -u clawden-router.service`; `clawden doctor` checks what "
        "the services need, and `systemctl start clawden.target` starts them again",
    ]


def test_systemds_results_are_said_in_plain_words() -> None:
    def why(result: str, status: int = 0, active: str = "failed") -> str:
        return units.why_not_started(units.UnitState("clawden-vault.service", active, "failed", result, status))

    assert why("signal", 9) == "it was killed by signal 9"
    assert why("timeout") == "it did not say it was ready in time (TimeoutStartSec=)"
    assert why("start-limit-hit").startswith("it failed too often")
    assert why("success", active="inactive") == "it is inactive (failed)"
    assert why("exit-code", 78) == "it exited 78: it cannot run as configured (its journal says why)"


def test_install_now_enables_reloads_nats_then_starts_everything_last(tmp_path: Path) -> None:
    inst = install_for(tmp_path / "home", "user")
    plan = units.install_plan(inst, tmp_path / "units", now=True)
    commands = [str(a) for a in plan if isinstance(a, units.Run | units.Start)]
    enabled = units.enabled_units(inst)
    # NATS knows a new bridge's identity before the bridge starts; nothing is started by `enable`.
    assert commands.index("$ systemctl --user enable " + " ".join(enabled)) < commands.index(
        "$ systemctl --user try-reload-or-restart clawden-nats.service"
    )
    assert plan[-1] == units.Start("user", tuple(enabled), tmp_path / "home" / "keys")
    assert not any("--now" in c for c in commands)
