"""The whole system for the chaos module, as for the end-to-end ones."""

from tests.e2e.conftest import stack

__all__ = ["stack"]
