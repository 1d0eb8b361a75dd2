"""Clawden's scheduler service."""
