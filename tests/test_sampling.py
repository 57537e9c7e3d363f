"""One validated sampling type; errors say the allowed range and the value given."""

from __future__ import annotations

import math

import pytest

from inference import InvalidInput, SamplingOptions


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 10**9}, "max_new_tokens"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"repetition_penalty": 0.5}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"typical_p": 0.5}, "typical_p"),
    ],
)
def test_out_of_range_is_refused_bilingually(values: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        SamplingOptions.parse(**values)
    assert field in err.value.ja and field in err.value.en
    assert "範囲" in err.value.ja or field == "typical_p"
