"""Search spaces and search configs: what is sampled, how it binds, and errors that say why."""

import math

import optuna
import pytest

import gin
from ft_scaling.config import flags
from ft_scaling.study.search import config as search_config
from ft_scaling.study.search import space as search_space
from ft_scaling.study.search.space import SearchSpace, SearchSpaceError

MICRO = "tests/study/micro_search.gin"
SPACE = {
    "LEARNING_RATE": ("log_uniform", 1e-3, 1e-1),
    "WARMUP_STEPS": ("int", 0, 10),
    "LORA_RANK": ("log_int", 2, 16),
    "LORA_ALPHA": ("uniform", 1.0, 4.0),
    "BATCH_SIZE": ("categorical", 8, 16, 32),
}


@pytest.mark.parametrize(
    "spec, message",
    [
        (("loguniform", 1e-3, 1e-1), "unknown kind 'loguniform'; allowed kinds: int, log_int, "
                                     "log_uniform, uniform, categorical"),
        ("log_uniform", "unknown kind 'log_uniform'"),  # a bare string, not a tuple
        (("log_uniform", 0.0, 1.0), "'log_uniform' needs low > 0, got 0.0"),
        (("uniform", 2.0, 1.0), "low=2.0 must be < high=1.0"),
        (("int", 0.5, 4), "'int' bounds must be integers"),
        (("uniform", 1.0), "'uniform' takes exactly (low, high) numbers"),
        (("categorical",), "'categorical' needs at least 1 value"),
        (("categorical", (32, 32)), "choices [(32, 32)] are not allowed; a choice must be one "
                                    "of: bool, int, float, str, NoneType"),
        (("categorical", 8, 8), "repeated choices"),
    ],
)  # fmt: skip
def test_a_bad_entry_names_its_key_and_what_is_allowed(spec, message):
    with pytest.raises(SearchSpaceError) as error:
        SearchSpace({"LEARNING_RATE": spec})
    assert "search space key 'LEARNING_RATE'" in str(error.value)
    assert message in str(error.value)


def test_an_empty_space_or_a_bad_key_is_refused():
    with pytest.raises(SearchSpaceError, match="empty"):
        SearchSpace({})
    with pytest.raises(SearchSpaceError, match="'LEARNING RATE' is not a gin binding key"):
        SearchSpace({"LEARNING RATE": ("uniform", 0.0, 1.0)})


def test_sampled_values_lie_in_their_distributions():
    space = SearchSpace(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    samples = [space.suggest(study.ask()) for _ in range(200)]
    lrs = [s["LEARNING_RATE"] for s in samples]
    assert all(1e-3 <= lr <= 1e-1 for lr in lrs)
    # Log-uniform: about half the draws fall below the geometric midpoint 1e-2.
    assert 0.4 < sum(lr < 1e-2 for lr in lrs) / len(lrs) < 0.6
    assert {s["BATCH_SIZE"] for s in samples} == {8, 16, 32}
    assert {s["WARMUP_STEPS"] for s in samples} == set(range(11))
    assert all(isinstance(s["LORA_RANK"], int) and 2 <= s["LORA_RANK"] <= 16 for s in samples)
    assert all(1.0 <= s["LORA_ALPHA"] <= 4.0 for s in samples)


def test_values_become_gin_bindings_that_round_trip():
    values = {"LEARNING_RATE": 0.1 + 0.2, "BATCH_SIZE": 16, "LORA_ALPHA": 4.0, "PACK": False}
    lines = search_space.bindings(values)
    # Full precision (repr), so the bound value is exactly the sampled one.
    assert lines == ["BATCH_SIZE = 16", "LEARNING_RATE = 0.30000000000000004", "LORA_ALPHA = 4.0",
                     "PACK = False"]  # fmt: skip
    gin.parse_config(lines)
    for key, value in values.items():
        assert gin.query_parameter(f"%{key}") == value


def _search(*bindings) -> search_config.Search:
    flags.parse_gin([MICRO], list(bindings))
    return search_config.Search()


def test_a_key_that_is_not_a_macro_of_the_trial_fails_listing_the_macros(tmp_path):
    config = _search("SearchSpace.params = {'LERNING_RATE': ('log_uniform', 1e-3, 1e-1)}")
    with pytest.raises(SearchSpaceError) as error:
        search_config.check_space(config, str(tmp_path))
    text = str(error.value)
    assert "'LERNING_RATE' is not a macro of the trial's gin files" in text
    assert "LEARNING_RATE" in text.split("known macros:")[1]
    assert "LORA_RANK" in text.split("known macros:")[1]


def test_a_misspelt_configurable_parameter_fails_in_gin(tmp_path):
    config = _search("SearchSpace.params = {'train.warmup_step': ('int', 0, 4)}")
    with pytest.raises(ValueError, match="warmup_step"):
        search_config.check_space(config, str(tmp_path))


@pytest.mark.parametrize(
    "binding, message",
    [
        ("Search.full_budget_for = 'some'", "full_budget_for='some'; allowed: top_k, all"),
        ("Search.metric = 'bleu'", "metric='bleu'; allowed: dev_loss, dev_ppl"),
        ("Search.pruner = 'hyperband'", "pruner='hyperband'; allowed: none, median"),
        ("Search.early_fraction = 0.0", "early_fraction=0.0 must lie in (0, 1]"),
    ],
)
def test_bad_search_settings_are_refused_by_name(binding, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        _search(binding)


def test_run_ids_follow_the_config_not_the_search_directory():
    config = _search()
    values = {"LEARNING_RATE": 0.01, "WARMUP_STEPS": 1}
    here, there = (search_config.trial_run(config, values, d) for d in ("/a/out", "/b/out"))
    assert here.run_id == there.run_id
    assert "INITIAL_CHECKPOINT_PATH='/a/out/runs/pretrain_" in " ".join(here.bindings)
    other = search_config.trial_run(config, {**values, "LEARNING_RATE": 0.02}, "/a/out")
    assert other.run_id != here.run_id
    # Sampled values come last, so they override the search's fixed bindings.
    assert here.bindings[-2:] == ("LEARNING_RATE = 0.01", "WARMUP_STEPS = 1")
    assert here.depends_on == search_config.pretrain_run(config, "/a/out").run_id
    assert math.isclose(config.early_fraction, 0.5) and config.method == "lora"


@pytest.mark.parametrize("name", ["demo", "demo_prompt"])
def test_the_shipped_searches_bind_every_key(name, tmp_path):
    flags.parse_gin([f"gin/searches/{name}.gin"], [])
    config = search_config.Search()
    assert config.trials >= 16 and config.early_fraction == 0.2
    assert config.full_budget_for == "all"  # the rank-correlation check sees every trial
    search_config.check_space(config, str(tmp_path))  # raises on a key gin cannot bind
    method = {"demo": "LORA_RANK", "demo_prompt": "PROMPT_LENGTH"}[name]
    assert method in config.space.params and "LEARNING_RATE" in config.space.params
