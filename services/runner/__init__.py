"""Clawden's runner service."""
