"""One rule for "did you mean" across settings, choices and table columns."""

import pytest

from wmhseg.errors import InputError, check_known_keys, closest, did_you_mean


def test_closest_prefers_the_same_word_in_another_case_then_the_closest_spelling():
    assert closest("als", ["control", "ALS"]) == "ALS"
    assert closest("contorl", ["control", "ALS"]) == "control"
    assert closest("xyz", ["control", "ALS"]) is None
    assert did_you_mean("contorl", ("control", "ALS")) == "; did you mean 'control'?"
    assert did_you_mean("xyz", ("control", "ALS")) == ""


def test_unknown_key_names_the_section_the_key_and_the_closest_one():
    with pytest.raises(InputError, match=r"unknown data.synthesis setting 'porb'; did you mean 'prob'\? \(known: prob, seed\)"):
        check_known_keys({"porb": 0.5}, ("prob", "seed"), "data.synthesis")
    check_known_keys({"prob": 0.5}, ("prob", "seed"), "data.synthesis")  # known keys pass
