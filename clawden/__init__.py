"""Clawden: a personal AI assistant for a home server."""
