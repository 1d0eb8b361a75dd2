"""The real router process on real NATS (as tests/router has it), and the whole stack (as tests/e2e has it)."""

from tests.e2e.conftest import stack
from tests.router.conftest import js, router

__all__ = ["js", "router", "stack"]
