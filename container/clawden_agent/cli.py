"""`clawden` inside the agent container: the owner's command names and flags, sent as they are to the host
over the session's admin socket (one JSON line each way), which decides what this agent may see or ask for.
Stdlib only. Writes come back as "approval pending"; the outcome arrives later as a message."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

# clawden.agentcontainer.ADMIN_MOUNT: services/runner/admin.py binds the socket in the folder mounted there.
ADMIN_SOCKET = "/run/clawden/admin/admin.sock"
TIMEOUT = 60.0  # a read asks the router or scheduler; it answers in milliseconds unless one is down
MAX_REPLY = 4 * 1024 * 1024


def socket_path() -> Path:
    return Path(os.environ.get("CLAWDEN_ADMIN_SOCKET", ADMIN_SOCKET))


def ask(argv: list[str], path: Path) -> dict[str, object]:
    """One request, one answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(json.dumps({"argv": argv}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n") and len(reply) < MAX_REPLY:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    answer = json.loads(reply) if reply.strip() else {}
    if not isinstance(answer, dict):
        raise ValueError("the host's answer is not an object")
    return answer


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        answer = ask(args or ["help"], socket_path())
    except (OSError, ValueError) as exc:
        print(
            f"clawden: cannot reach the host ({exc}); the clawden command works only in a Clawden session",
            file=sys.stderr,
        )
        return 2
    if answer.get("ok"):
        print(answer.get("output", ""))
        return 0
    print(f"clawden: {answer.get('error') or 'the host gave no answer'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
