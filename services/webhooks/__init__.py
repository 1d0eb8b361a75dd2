"""The webhook front door: one HTTP listener for every channel that pushes over HTTP (services/webhooks/README.md)."""
