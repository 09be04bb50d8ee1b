"""Fixtures shared by the engine tests: tiny Qwen2.5-VL models, loaded once per test module."""

import pytest
from engine_helpers import make_loaded


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    return make_loaded(tmp_path_factory.mktemp("models"), layers=1)


@pytest.fixture(scope="module")
def two_layer(tmp_path_factory):
    return make_loaded(tmp_path_factory.mktemp("models"), layers=2)
