"""Every rendered unit passes `systemd-analyze verify` without a single warning, names only units that
exist, and keeps the `systemd-analyze security` exposure the README records for it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from clawden.cli import units
from tests.units.conftest import VARIANTS, analyze_env, install_for, systemd_analyze, write_units

README = Path(__file__).resolve().parents[2] / "README.md"
SCORED = [
    "clawden-nats.service",
    *(f"clawden-{s}.service" for s in units.SERVICES),
    units.channel_unit("telegram"),
    units.channel_unit("matrix"),
    units.channel_unit("email"),
    units.channel_unit("slack"),
    units.channel_unit("discord"),
    "clawden-webhooks.service",
    "clawden-web.service",
]


@pytest.fixture(params=VARIANTS)
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, list[Path]]:
    variant = request.param
    folder = tmp_path / "units"
    return variant, folder, write_units(install_for(tmp_path / "home", variant), folder)


def analyze(variant: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    scope = ["--user"] if variant == "user" else []
    return subprocess.run(
        [systemd_analyze(), *scope, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=analyze_env(folder, folder.parent / "xdg-runtime"),
    )


def test_systemd_analyze_verify_says_nothing_about_any_unit(rendered: tuple[str, Path, list[Path]]) -> None:
    variant, folder, paths = rendered
    result = analyze(variant, folder, "verify", "--man=no", *map(str, paths))
    # verify exits 0 on unknown keys and bad values, so any output at all is a failure.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_every_unit_a_unit_names_is_installed_with_it(rendered: tuple[str, Path, list[Path]]) -> None:
    variant, _, paths = rendered
    names = {p.name for p in paths} | {units.CHANNEL_TEMPLATE}
    wanted_by = "multi-user.target" if variant.startswith("system") else "default.target"
    for path in paths:
        for key, value in re.findall(r"^(After|Wants|Requires|PartOf|WantedBy)=(.+)$", path.read_text(), re.M):
            for name in value.split():
                assert name in names or name in (wanted_by, "network-online.target"), f"{path.name}: {key}={name}"


def test_the_bridge_template_runs_its_instance_as_its_own_identity(tmp_path: Path) -> None:
    [template] = [
        u for u in units.systemd_units(install_for(tmp_path / "home", "system")) if u.name == units.CHANNEL_TEMPLATE
    ]
    assert "ExecStart=" in template.text and " -m clawden run channel@%i\n" in template.text
    assert "SyslogIdentifier=clawden-channel-%i\n" in template.text
    assert f"LoadCredential=nats.nk:{tmp_path / 'home'}/keys/nats/channel-%i.nk\n" in template.text


def test_the_bridge_path_unit_starts_its_namesake_when_its_key_file_is_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    rendered = {u.name: u.text for u in units.systemd_units(install_for(home, "user"))}
    text = rendered[units.CHANNEL_PATH_TEMPLATE]
    # Fired once a writer closes the file, not on each write of a half-written token (PathModified=).
    assert re.findall(r"^Path\w*=(.*)$", text, re.M) == [f"{home}/keys/%i"]
    assert "\nPathChanged=" in text and "\nUnit=" not in text  # so clawden-channel@<name>.service is what starts
    # Enabled and stopped with the target, as the bridge is.
    assert "\nPartOf=clawden.target\n" in text and "\nWantedBy=clawden.target\n" in text
    assert units.channel_units("telegram") == ("clawden-channel@telegram.service", "clawden-channel@telegram.path")


def readme_scores() -> dict[tuple[str, str], float]:
    """`| clawden-router.service | 1.1 | 1.1 | 1.6 |` rows under the README's exposure table."""
    scores: dict[tuple[str, str], float] = {}
    for row in re.findall(r"^\| `?(clawden-[\w@.-]+)`? \|(.+)\|$", README.read_text(), re.M):
        name, cells = row
        for variant, cell in zip(VARIANTS, cells.split("|"), strict=True):
            scores[(variant, name)] = float(cell.strip())
    return scores


def test_security_exposure_is_no_worse_than_the_readme_says(rendered: tuple[str, Path, list[Path]]) -> None:
    variant, folder, _ = rendered
    recorded = readme_scores()
    for name in SCORED:
        result = analyze(variant, folder, "security", "--offline=true", "--no-pager", str(folder / name))
        found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
        assert found, result.stdout + result.stderr
        score = float(found.group(1))
        assert (variant, name) in recorded, f"README has no exposure score for {name} ({variant}); it is {score}"
        assert score <= recorded[(variant, name)], f"{name} ({variant}) exposure rose to {score}"
