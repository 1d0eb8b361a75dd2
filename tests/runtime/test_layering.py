"""Layering: the kernel (`clawden/`) never imports a service, no service imports another one, neither the kernel
nor a service imports the command line and operator tools (`clawden/cli/`), and the pure cores do no I/O.

Services meet only on NATS, through the contract in `clawden/`; what two of them share lives there.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, dotted name) for every import statement at any depth, functions included; relative
    imports resolved, and `from a import b` named `a.b` since b may be a module."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = [node.module] if node.module else []
            if node.level:
                base = [*package[: len(package) - node.level + 1], *base]
            yield from ((node.lineno, ".".join([*base, alias.name])) for alias in node.names)


def modules(folder: str) -> list[tuple[Path, str]]:
    found = [(p, module_name(p)) for p in sorted((ROOT / folder).rglob("*.py"))]
    assert found, f"no modules under {folder}/"
    return found


def service_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def test_the_scan_sees_imports_inside_functions_and_relative_ones() -> None:
    source = "import os\ndef f():\n    from services.router import engage\n    from . import sibling\n"
    assert list(imported(source, "services.channels.bridge")) == [
        (1, "os"),
        (3, "services.router.engage"),
        (4, "services.channels.sibling"),
    ]


def test_the_kernel_imports_no_service() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path, module in modules("clawden")
        for line, name in imported(path.read_text(), module, path.name == "__init__.py")
        if (name == "services" or name.startswith("services."))
    ]
    assert wrong == []


def test_no_service_imports_another() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path, module in modules("services")
        if service_of(module) is not None
        for line, name in imported(path.read_text(), module, path.name == "__init__.py")
        if service_of(name) not in (None, service_of(module))
    ]
    assert wrong == []


CLI = "clawden.cli"  # the command and the operator tools: doctor, status, logview, units, image


def imports_the_cli(name: str) -> bool:
    return name == CLI or name.startswith(f"{CLI}.")


def in_the_cli(module: str) -> bool:
    return imports_the_cli(module) or module == "clawden.__main__"  # `python -m clawden` is the command


def test_no_service_imports_the_command_line_or_the_operator_tools() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path, module in modules("services")
        for line, name in imported(path.read_text(), module, path.name == "__init__.py")
        if imports_the_cli(name)
    ]
    assert wrong == []


def test_the_kernel_imports_neither_the_command_line_nor_the_operator_tools() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path, module in modules("clawden")
        if not in_the_cli(module)
        for line, name in imported(path.read_text(), module, path.name == "__init__.py")
        if imports_the_cli(name)
    ]
    assert wrong == []


def test_the_operator_tools_are_in_the_cli_package_where_the_rules_above_see_them() -> None:
    tools = ("cli.py", "commands", "doctor.py", "status.py", "logview.py", "units.py", "image.py")
    assert [name for name in tools if (ROOT / "clawden" / name).exists()] == []
    assert all((ROOT / "clawden" / "cli" / name).exists() for name in tools[1:])


def test_the_scan_sees_a_kernel_module_importing_the_cli() -> None:
    source = "def f():\n    from clawden.cli import status\n    from .cli.commands import ops\n"
    names = [name for _, name in imported(source, "clawden.chat")]
    assert [imports_the_cli(n) for n in names] == [True, True]


# The pure cores decide from plain data: no clock, no event loop, no disk, no bus, no Docker.
PURE = (
    "services/runner/core.py",
    "services/router/engage.py",
    "services/vault/policy.py",
    "container/clawden_agent/ledger.py",
    "services/vault/tokenless.py",
)
IO = (
    "asyncio",
    "time",
    "os",
    "sqlite3",
    "aiosqlite",
    "subprocess",
    "socket",
    "docker",
    "nats",
    "pathlib",
    "clawden.sessiondb",
    "clawden.servicedb",
    "clawden.runtime",
    "clawden.bus.connection",
)


@pytest.mark.parametrize("path", PURE)
def test_a_pure_core_does_no_io(path: str) -> None:
    module = module_name(ROOT / path)
    wrong = [
        f"{path}:{line} imports {name}"
        for line, name in imported((ROOT / path).read_text(), module)
        if any(name == m or name.startswith(f"{m}.") for m in IO)
    ]
    assert wrong == []
