"""Clawden's channels service."""
