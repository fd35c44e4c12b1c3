"""Fixtures of the ShaPO tests; the helpers live in shapo_helpers.py."""

from __future__ import annotations

import pytest
from shapo_helpers import Setup, make_setup


@pytest.fixture
def llama_setup(nano_llama, tiny_tokenizer) -> Setup:
    return make_setup(nano_llama, tiny_tokenizer)
