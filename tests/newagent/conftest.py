"""The whole stack, as tests/e2e has it."""

from tests.e2e.conftest import stack

__all__ = ["stack"]
