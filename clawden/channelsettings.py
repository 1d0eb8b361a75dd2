"""What each built-in chat bridge reads of its `[channels.<name>]` table, and the kind of each value. config.toml's
unknown-name warnings (`config.unknown_settings`) and `clawden doctor` (`bridgeconfig.settings_problems`) check a
table against it, so that a typo or a value the bridge would refuse is said before the bridge starts. A bridge
that gains a setting adds it here (each bridge's module docstring lists the same names);
tests/channels/test_settings_names.py checks that these are the keys each bridge's code reads."""

from __future__ import annotations

from typing import Literal

# number: seconds or a size, never negative (`bridgeconfig.number`); whole: an integer (a port); flag: true or false.
Kind = Literal["text", "number", "whole", "flag"]

SETTINGS: dict[str, dict[str, Kind]] = {
    "telegram": {
        "api_url": "text",
        "poll_timeout": "number",
        "poll_grace": "number",
        "send_deadline": "number",
        "typing_max": "number",
        "delete_webhook": "flag",
    },
    "discord": {"api_url": "text", "gateway_url": "text", "send_deadline": "number"},
    "slack": {"api_url": "text", "send_deadline": "number"},
    "whatsapp": {"phone_number_id": "text", "graph_url": "text", "template": "text", "template_language": "text"},
    "matrix": {"homeserver": "text", "sync_timeout": "number", "send_deadline": "number", "typing_max": "number"},
    "email": {
        "address": "text",
        "name": "text",
        "username": "text",
        "imap_host": "text",
        "imap_port": "whole",
        "imap_security": "text",
        "smtp_host": "text",
        "smtp_port": "whole",
        "smtp_security": "text",
        "mailbox": "text",
        "idle": "flag",
        "poll_interval": "number",
        "idle_renew": "number",
        "ca_file": "text",
        "allow": "text",
        "trusted_servers": "text",
        "require_authentication": "flag",
        "max_file_mb": "number",
        "send_deadline": "number",
    },
}

FLAGS = ("1", "true", "yes", "0", "false", "no")  # what the bridges read as on or off (TOML's true is "True")
