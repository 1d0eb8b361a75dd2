"""What every page must pass in the browser tests: axe-core (vendored under vendor/) with no serious or critical
violation, every control reachable by Tab; and its screenshots at desktop and phone sizes, into docs/screens/ only
when asked (CLAWDEN_SCREENSHOTS=1: they change with every run's times and ids), else into the test's own folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
SCREENS = Path(__file__).resolve().parents[2] / "docs" / "screens"
SIZES = {"desktop": {"width": 1200, "height": 900}, "phone": {"width": 390, "height": 844}}
CONTROLS = "a[href], button, input:not([type=hidden]), select, textarea, [tabindex]:not([tabindex='-1'])"
MAX_TABS = 400

# Each visible control gets a number (so two alike still count twice); its markup names it in a failure.
_MARK = """(selector) => Array.from(document.querySelectorAll(selector))
  .filter(el => !el.disabled && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden')
  .map((el, i) => { el.setAttribute('data-tab-i', String(i)); return el.outerHTML.slice(0, 140); })"""
_FOCUSED = "() => (document.activeElement && document.activeElement.getAttribute('data-tab-i')) || ''"


async def serious_violations(page: Any) -> list[str]:
    """axe-core's findings of impact serious or critical, as `rule: what, where` lines. The script goes in through
    the DevTools protocol (page.evaluate), which the page's Content-Security-Policy does not govern."""
    await page.evaluate(AXE.read_text() + "\n;undefined")
    result = await page.evaluate("async () => await axe.run(document)")
    return [
        f"{v['id']}: {v['help']} at {', '.join(str(n['target']) for n in v['nodes'][:3])}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


async def unreachable_by_tab(page: Any) -> list[str]:
    """Controls that pressing Tab from the top of the page never focuses."""
    marked: list[str] = await page.evaluate(_MARK, CONTROLS)
    await page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    reached: set[str] = set()
    for _ in range(min(MAX_TABS, len(marked) + 5)):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(_FOCUSED)
        if focused in reached:
            break  # around once: the focus came back to where it started
        reached.add(focused)
    return [html for i, html in enumerate(marked) if str(i) not in reached]


def screens(tmp_path: Path) -> Path:
    """Where the screenshots go: docs/screens/ to refresh the README's, else the test's folder (still taken, so a
    page that cannot be rendered fails the test)."""
    into = SCREENS if os.environ.get("CLAWDEN_SCREENSHOTS") == "1" else tmp_path
    into.mkdir(parents=True, exist_ok=True)
    return into


async def check_and_shoot(page: Any, name: str, into: Path) -> None:
    """Axe and the keyboard at desktop size, then a screenshot at each size (the page as a person sees it)."""
    problems = await serious_violations(page)
    assert not problems, f"{name}: {problems}"
    missed = await unreachable_by_tab(page)
    assert not missed, f"{name}: not reachable by Tab: {missed}"
    await page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    for size, viewport in SIZES.items():
        await page.set_viewport_size(viewport)
        await page.screenshot(path=str(into / f"{name}-{size}.png"), full_page=True)
    await page.set_viewport_size(SIZES["desktop"])
