"""Clawden services: each a separate process that meets the others only on NATS."""
