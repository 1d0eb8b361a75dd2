"""The agent runner tells the model API refusing the key from the vault's own 401/403 answers, whose messages say
their own fix (a grant, a rule, a human's no): only the first gets the `clawden secrets add anthropic` hint."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from claude_agent_sdk import ResultMessage

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "container"))  # the image's own package
from clawden_agent.loop import KEY_FIX, VAULT_REFUSALS, result_error

RESPONSES = Path(__file__).parents[2] / "services" / "vault" / "responses.py"
# The vault's error names that are never a 401 or 403: the agent runner need not know them.
OTHER_STATUSES = {"rate_limited": 429, "proxy_auth_required": 407, "not_found": 404}


def test_every_401_or_403_the_vault_answers_itself_is_known_to_the_agent_runner() -> None:
    named = set(re.findall(r'"error": "([a-z_]+)"', RESPONSES.read_text()))
    assert named - set(OTHER_STATUSES) == set(VAULT_REFUSALS)


def failed(status: int, result: str) -> ResultMessage:
    return ResultMessage(
        subtype="success",
        duration_ms=1,
        duration_api_ms=1,
        is_error=True,
        num_turns=1,
        session_id="s",
        result=result,
        api_error_status=status,
    )


@pytest.mark.parametrize(
    ("status", "result", "hinted"),
    [
        (401, "Invalid API key · Fix external API key", True),  # Anthropic's authentication_error
        (403, 'API Error: 403 {"type":"error","error":{"type":"permission_error"}}', True),
        (401, 'API Error: 401 {"error": "access_restricted", "message": "… clawden secrets grant …"}', False),
        (403, 'API Error: 403 {"error": "blocked_by_policy", "message": "… the vault rule …"}', False),
        (403, 'API Error: 403 {"error": "manual_approval_denied"}', False),
        (500, "API Error: 500 overloaded", False),
    ],
)
def test_only_the_model_api_refusing_the_key_names_the_owners_key_fix(status: int, result: str, hinted: bool) -> None:
    assert (KEY_FIX in result_error(failed(status, result), 100)) is hinted
