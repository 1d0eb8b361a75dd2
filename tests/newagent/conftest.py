"""The whole stack (as tests/e2e has it) and the real router process on real NATS (as tests/router has it)."""

from tests.e2e.conftest import stack
from tests.router.conftest import router

__all__ = ["router", "stack"]
