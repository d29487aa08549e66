"""hardware: the oneDNN primitive-cache cap that training on CPU sets (benchmarks/RESULTS.md, "On a
CPU with bf16 units"), and that a user's own setting wins."""

from __future__ import annotations

import pytest

from warmline.hardware import ONEDNN_CACHE_CAPACITY, cap_onednn_cache


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.delenv("DNNL_PRIMITIVE_CACHE_CAPACITY", raising=False)
    return monkeypatch


def test_the_cap_is_set_when_nothing_is(clean_env):
    import os

    cap_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE_CAPACITY)


@pytest.mark.parametrize("name", ["ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"])
def test_a_users_own_capacity_is_kept(clean_env, name):
    import os

    clean_env.setenv(name, "256")
    cap_onednn_cache()
    assert os.environ[name] == "256"
    if name == "DNNL_PRIMITIVE_CACHE_CAPACITY":  # the older name alone still counts as the user's
        assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
