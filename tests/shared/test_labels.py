"""Label keys and values against the Kubernetes apimachinery rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import labels
from shared.labels import (
    LabelError,
    is_owned_key,
    label_key_errors,
    label_value_errors,
    to_label_value,
    validate_label_or_raise,
)


@pytest.mark.parametrize("key", labels.NODE_LABEL_KEYS)
def test_every_published_key_is_valid_and_ours(key: str) -> None:
    assert label_key_errors(key) == []
    assert is_owned_key(key)


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("stowage.io/" + "a" * 64, "no more than 63"),
        ("stowage.io/-gpu", "start and end with an alphanumeric"),
        ("Stowage.IO/gpu", "lowercase RFC 1123"),
        ("/gpu", "prefix part must be non-empty"),
        ("stowage.io/", "name part must be non-empty"),
        ("a" * 254 + "/gpu", "no more than 253"),
    ],
)
def test_bad_keys_are_explained(key: str, fragment: str) -> None:
    errors = label_key_errors(key)
    assert any(fragment in e for e in errors), errors
    with pytest.raises(LabelError, match="invalid label key"):
        validate_label_or_raise(key, "ok")


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", True),
        ("NVIDIA-H100-80GB-HBM3", True),
        ("a" * 63, True),
        ("a" * 64, False),
        ("has space", False),
        ("-leading", False),
        ("trailing.", False),
        ("ok_1.2-3", True),
    ],
)
def test_value_rules(value: str, valid: bool) -> None:
    assert (label_value_errors(value) == []) is valid


def test_product_names_become_label_values_like_gfd() -> None:
    assert to_label_value("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert to_label_value("Tesla V100-SXM2-16GB") == "Tesla-V100-SXM2-16GB"
    mig = "NVIDIA A100-SXM4-80GB (MIG 1g.10gb)"
    assert to_label_value(mig) == "NVIDIA-A100-SXM4-80GB-MIG-1g.10gb"


def test_long_values_are_shortened_deterministically_and_stay_distinct() -> None:
    a = to_label_value("b7a1c2d3-0000-4000-8000-000000000001.b7a1c2d3-0000-4000-8000-00000001.3")
    b = to_label_value("b7a1c2d3-0000-4000-8000-000000000001.b7a1c2d3-0000-4000-8000-00000001.4")
    assert len(a) == 63
    assert label_value_errors(a) == []
    assert a != b
    assert a == to_label_value(
        "b7a1c2d3-0000-4000-8000-000000000001.b7a1c2d3-0000-4000-8000-00000001.3"
    )


@given(st.text(max_size=300))
def test_any_text_becomes_a_valid_value(text: str) -> None:
    assert label_value_errors(to_label_value(text)) == []


def test_foreign_prefixes_are_not_ours() -> None:
    assert not is_owned_key("nvidia.com/gpu.product")
    assert not is_owned_key("kubernetes.io/hostname")
    assert not is_owned_key("stowage.io.evil.com/x")
