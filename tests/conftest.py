"""Shared test setup: keep TensorFlow quiet and off any accelerator; tests run on CPU.

Hermetic: no test reads what this machine happens to hold. Data locations a user may have set
(debian_l10n build, MLSum-fr, HANS, CoLA OOD) are unset, so the shipped snapshot and the tests'
own files are used; the Hugging Face hub is offline with an empty cache of the session's own.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
for _name in [n for n in os.environ if n.startswith("FT_SCALING_")]:
    del os.environ[_name]
_HF_HOME = tempfile.mkdtemp(prefix="ft_scaling_test_hf_")
os.environ.update(HF_HOME=_HF_HOME, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
# The tests' programs are tiny and compiled once or twice each: XLA's optimisation passes cost
# more than they save (about 20% of the suite's time). Inherited by the tests' subprocesses.
# Only tests that compare with numbers of optimised code (default_bit_identity_test) turn it off.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import pytest  # noqa: E402

import gin  # noqa: E402


@pytest.fixture(autouse=True)
def _clear_gin():
    # Gin bindings are global: a test that parses a gin file must not configure the next test.
    gin.clear_config()
    yield
    gin.clear_config()
