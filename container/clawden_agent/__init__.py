"""Clawden's agent runner: runs inside the agent container and answers the session's inbound rows."""
