"""Placeholder until the docker fixtures land."""
