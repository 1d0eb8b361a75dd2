#!/opt/agent/bin/python3
"""`clawden-browse URL`: the agent's browser, in a group image with the browser (clawden groups browser enable).
Loads URL in Debian's Chromium, driven by Playwright's Python package (no browser download), headless, through
the in-container relay to the vault's gateway (every request audited and policed by the vault), and prints the
page's title and text. The vault's CA is trusted the way Chromium on Linux trusts a CA: in the user's NSS
database (~/.pki/nssdb, made here with certutil). `--no-sandbox`: the container drops every capability and
Chromium's sandbox needs user namespaces or setuid; the container itself is the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
NSS_NAME = "clawden-vault"
MAX_TEXT = 20_000


def trust_vault_ca(home: Path, ca_file: str) -> None:
    """Put the vault's CA in the user's NSS database, trusted for TLS servers (idempotent)."""
    db = home / ".pki" / "nssdb"
    if not (db / "cert9.db").exists():
        db.mkdir(parents=True, exist_ok=True)
        subprocess.run(["certutil", "-N", "-d", f"sql:{db}", "--empty-password"], check=True)
    subprocess.run(["certutil", "-A", "-d", f"sql:{db}", "-n", NSS_NAME, "-t", "C,,", "-i", ca_file], check=True)


def launch_args() -> list[str]:
    port = os.environ.get("CLAWDEN_RELAY_PORT", "3128")
    return [f"--proxy-server=http://127.0.0.1:{port}", "--no-sandbox", "--disable-dev-shm-usage"]


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].startswith(("https://", "http://")):
        print("usage: clawden-browse https://HOST/PATH", file=sys.stderr)
        return 2
    ca_file = os.environ.get("CLAWDEN_CA_FILE", "")
    if ca_file:
        trust_vault_ca(Path.home(), ca_file)
    from playwright.sync_api import sync_playwright  # there only in a browser image

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=launch_args())
        try:
            page = browser.new_page()
            response = page.goto(argv[1], wait_until="load", timeout=60_000)
            print(f"status: {response.status if response else '?'}")
            print(f"title: {page.title()}")
            print(page.inner_text("body")[:MAX_TEXT])
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
