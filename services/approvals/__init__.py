"""Clawden's approvals service."""
