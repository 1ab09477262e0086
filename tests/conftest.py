"""Shared test setup: keep TensorFlow quiet and off any accelerator; tests run on CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402

import gin  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_gin():
    # Gin bindings are global: a test that parses a gin file must not configure the next test.
    gin.clear_config()
    yield
    gin.clear_config()
