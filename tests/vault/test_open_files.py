"""The vault raises a low open-file limit it was given (`clawden up` under a shell's 1024, macOS's 256), so every
group's gateway connections fit; the units set it themselves."""

from __future__ import annotations

import resource
import subprocess
import sys

SCRIPT = """
import resource
from services.vault.service import raise_open_files
raise_open_files()
print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_a_vault_given_256_open_files_raises_them_to_what_its_caps_need() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def low() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run([sys.executable, "-c", SCRIPT], preexec_fn=low, capture_output=True, text=True, check=True)
    expected = 8192 if hard == resource.RLIM_INFINITY else min(8192, hard)
    assert int(out.stdout) == expected
