"""Pairing codes: typed loosely by a person, matched exactly, stored only as a digest."""

from __future__ import annotations

from services.router import pairing


def test_a_new_code_matches_itself_typed_loosely_and_nothing_else() -> None:
    code = pairing.new_code()
    digest = pairing.digest(code)
    assert code not in digest
    assert pairing.matches(code, digest)
    assert pairing.matches(f"  {code.lower().replace('-', ' ')} ", digest)
    assert not pairing.matches(pairing.new_code(), digest)
    assert not pairing.matches(f"my code is {code}", digest)
    assert not pairing.matches(code, "")


def test_codes_avoid_characters_people_misread() -> None:
    codes = "".join(pairing.new_code() for _ in range(200))
    assert not set(codes) & set("01OIL")
