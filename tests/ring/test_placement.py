"""Auto placement of the process roles over the usable cores."""
from __future__ import annotations

import pytest

from obpipe.ring.placement import cores_for


def test_two_cores_book_alone_analysis_and_publisher_share_its_core():
    c = [0, 1]
    assert cores_for("book", "auto", c) == [1]
    assert cores_for("analysis", "auto", c) == cores_for("publisher", "auto", c) == [1]
    assert cores_for("rx", "auto", c) == cores_for("feed", "auto", c) == cores_for("supervisor", "auto", c) == [0]


def test_four_cores_analysis_and_publisher_get_their_own_core():
    c = [0, 1, 2, 3]
    assert cores_for("book", "auto", c) == [3]
    assert cores_for("analysis", "auto", c) == cores_for("publisher", "auto", c) == [2]
    assert cores_for("rx", "auto", c) == [0, 1]


def test_one_core_everyone_shares_and_explicit_lists_are_checked():
    assert cores_for("analysis", "auto", [0]) == [0]
    assert cores_for("analysis", [0, 5], [0, 1]) == [0]
    with pytest.raises(ValueError, match="pinning.publisher"):
        cores_for("publisher", [7], [0, 1])
