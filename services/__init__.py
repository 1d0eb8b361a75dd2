"""Clawden services: each a separate process that meets the others only on NATS."""

import clawden  # noqa: F401  # first, whatever imports a service: it loads nats lean (see clawden/__init__.py)
