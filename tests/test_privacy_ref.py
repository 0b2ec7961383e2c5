"""Pseudonymous household references: stable per key and round, unlinkable without the key."""

import pytest

from edge.privacy import household_ref


def test_household_ref_is_stable_and_depends_on_key_round_and_household():
    key = bytes(range(32))
    ref = household_ref(key, "2026-12", "KPM-3171-0815-0042")
    assert ref == household_ref(key, "2026-12", "KPM-3171-0815-0042")
    assert ref.startswith("h_") and len(ref) == 24 and "0042" not in ref
    assert ref != household_ref(key, "2027-01", "KPM-3171-0815-0042")
    assert ref != household_ref(key, "2026-12", "KPM-3171-0815-0043")
    assert ref != household_ref(bytes(32), "2026-12", "KPM-3171-0815-0042")
    # The separator keeps ("a", "bc") and ("ab", "c") apart.
    assert household_ref(key, "a", "bc") != household_ref(key, "ab", "c")


def test_household_ref_refuses_a_short_key():
    with pytest.raises(ValueError):
        household_ref(b"short", "2026-12", "KPM-1")
