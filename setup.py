"""Put `container/` (the agent image's build context) and `units/` (the unit templates) into the wheel as
`clawden/_resources/`, where `clawden.resources.resource_dir` finds them. Everything else is in pyproject.toml.

They stay at the top of the repo, where the design has them; an editable install reads them there, so
this copies nothing for one. `container/clawden_agent/` is build context, not a package of the wheel.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
RESOURCES = ("container", "units")


def resource_files() -> list[Path]:
    """The files under the resource folders, relative to the repo, without bytecode caches."""
    files = (p.relative_to(ROOT) for name in RESOURCES for p in sorted((ROOT / name).rglob("*")) if p.is_file())
    return [p for p in files if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")]


class BuildPyWithResources(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        shutil.rmtree(Path(self.build_lib, "clawden", "_resources"), ignore_errors=True)  # no stale copies
        for rel in resource_files():
            dest = Path(self.build_lib, "clawden", "_resources", rel)
            self.mkpath(str(dest.parent))
            self.copy_file(str(ROOT / rel), str(dest), preserve_mode=True)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs += [str(Path(self.build_lib, "clawden", "_resources", rel)) for rel in resource_files()]
        return outputs


setup(cmdclass={"build_py": BuildPyWithResources})
