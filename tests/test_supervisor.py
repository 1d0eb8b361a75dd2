"""`clawden up` runs a chat bridge exactly when it has a token."""

from __future__ import annotations

from pathlib import Path

from clawden import setup
from clawden.supervisor import configured_bridges


def test_a_bridge_runs_only_with_a_token(tmp_path: Path) -> None:
    cfg = setup.init(tmp_path)
    assert configured_bridges(cfg, {}) == []
    assert configured_bridges(cfg, {"CLAWDEN_TELEGRAM_TOKEN": "123:abc"}) == ["channel@telegram"]
    (cfg.keys_dir / "telegram").write_text("123:abc")
    assert configured_bridges(cfg, {}) == ["channel@telegram"]
