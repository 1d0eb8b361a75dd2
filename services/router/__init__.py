"""Clawden's router service."""
