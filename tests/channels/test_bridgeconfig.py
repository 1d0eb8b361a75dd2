"""A bridge's settings: numbers said wrong are refused with the table and key that hold them."""

import pytest

from clawden.bridgeconfig import BridgeConfigError, number


def test_a_number_setting_is_read_defaulted_and_refused_in_plain_words() -> None:
    assert number("matrix", {"sync_timeout": "12.5"}, "sync_timeout", 30.0) == 12.5
    assert number("matrix", {}, "sync_timeout", 30.0) == 30.0
    with pytest.raises(BridgeConfigError, match=r"\[channels.telegram\] poll_timeout must be a number, not 'soon'"):
        number("telegram", {"poll_timeout": "soon"}, "poll_timeout", 25.0)
    with pytest.raises(BridgeConfigError, match=r"\[channels.telegram\] send_deadline must not be negative"):
        number("telegram", {"send_deadline": "-1"}, "send_deadline", 600.0)
