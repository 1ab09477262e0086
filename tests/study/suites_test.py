"""Suite base models (study/suites.py): token rules, revision locations, the Pythia and OLMo-2
study gins, and the completeness check that stops a study before any run.

Pure Python and small files: no training, no network (the hub is faked or read from a cache
directory written here).
"""

import collections
import json
import os
import uuid

import numpy as np
import pytest

from ft_scaling.config import flags
from ft_scaling.scaling import procedure
from ft_scaling.study import runner, store, suites, sweep

B = 10**9
LISTED = "(listed in model.safetensors.index.json)"
PYTHIA_STEP = 2_097_152  # Biderman et al. 2023: 1024 x 2048 tokens per step
PAPER_OF = {  # suite gin -> the paper gin whose grids and recipe it copies
    "pythia_wmt14_ende": "paper_wmt14_ende",
    "pythia_wmt19_enzh": "paper_wmt19_enzh",
    "pythia_mlsum": "paper_mlsum",
    "olmo2_wmt14_ende": "paper_wmt14_ende",
}
SUITES = {
    # gin: (sizes, hub ids, default model's revisions, final revision(s), axes)
    "pythia": (
        ["410m", "1b", "1.4b", "2.8b", "6.9b", "12b"],
        [f"EleutherAI/pythia-{s}" for s in ("410m", "1b", "1.4b", "2.8b", "6.9b", "12b")],
        ["step48000", "step72000", "step96000", "step119000"],
    ),
    "olmo2": (
        ["1b", "7b", "13b", "32b"],
        [f"allenai/OLMo-2-{s}" for s in ("0425-1B", "1124-7B", "1124-13B", "0325-32B")],
        [
            "stage1-step760000-tokens1594B",
            "stage1-step1200000-tokens2517B",
            "stage1-step1700000-tokens3566B",
        ],
    ),
}
AXES = {  # runs per axis: (model size, pretraining data, PET size)
    "pythia_wmt14_ende": (576, 384, 396),  # 6 sizes x 32 D_f x 3; 4 revisions x 32 x 3
    "pythia_wmt19_enzh": (558, 372, 396),  # FMT's grid has 9 D_f: 31 D_f per model
    "pythia_mlsum": (558, 372, 396),
    "olmo2_wmt14_ende": (384, 288, 396),  # 4 sizes, 3 revisions
}


def _study(name: str, *bindings: str) -> sweep.Study:
    flags.parse_gin([f"gin/studies/{name}.gin"], list(bindings))
    return sweep.Study()


# --- token rules and locations -------------------------------------------------------------


def test_token_rules():
    assert suites.tokens_of("pythia", "step143000") == 143_000 * PYTHIA_STEP == 299_892_736_000
    assert suites.tokens_of("pythia", "step0") == 0
    assert suites.tokens_of("olmo2", "stage1-step928646-tokens3896B") == 3_896 * B
    assert suites.tokens_of("olmo2", "stage2-ingredient3-step11931-tokens50B") == 50 * B
    # The names round up to whole billions: within 1B of step x tokens per step.
    assert 0 <= 3_896 * B - 928_646 * 2**22 < B
    with pytest.raises(ValueError, match=r"'main' is 'step143000'"):
        suites.tokens_of("pythia", "main")
    with pytest.raises(ValueError, match="no 'tokens<N>B' part"):
        suites.tokens_of("olmo2", "main")
    with pytest.raises(ValueError, match="unknown token_rule 'chinchilla'; known: olmo2, pythia"):
        suites.tokens_of("chinchilla", "step1")


def _model(**fields) -> sweep.BaseModel:
    return sweep.BaseModel(**{"name": "m", **fields})


def test_hub_and_local_locations(tmp_path, monkeypatch):
    hub = suites.checkpoints(
        _model(hf_source="org/suite", revisions=("a", "b"), revision_tokens=(1, 2, 3))
    )
    assert [(c.revision, c.location, c.pretrain_tokens, c.final) for c in hub] == [
        ("a", "org/suite@a", 1, False),
        ("b", "org/suite@b", 2, False),
        ("main", "org/suite@main", 3, True),
    ]
    # Local: DIR/<revision>/; the final is DIR/<final_revision>/ or, absent, DIR itself.
    (tmp_path / "config.json").write_text("{}")
    local = suites.checkpoints(
        _model(
            hf_source=str(tmp_path),
            revisions=("step1",),
            final_revision="step9",
            token_rule="pythia",
        )
    )
    assert [c.location for c in local] == [str(tmp_path / "step1"), str(tmp_path)]
    (tmp_path / "step9").mkdir()
    final = suites.checkpoints(_model(hf_source=str(tmp_path), final_revision="step9"))
    assert [(c.location, c.pretrain_tokens) for c in final] == [(str(tmp_path / "step9"), None)]
    # A relative path that exists is local, not a hub id 'org/name'.
    monkeypatch.chdir(tmp_path.parent)
    relative = suites.checkpoints(_model(hf_source=f"{tmp_path.name}/step9"))
    assert relative[0].location == str(tmp_path / "step9" / "main")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (dict(revisions=("a", "a")), r"revisions \['a', 'a', 'main'\] \(final last\) repeat one"),
        (dict(revisions=("a",), revision_tokens=(1,)), "revision_tokens has 1 values for 2"),
        (dict(revisions=("a",)), "need their pretraining tokens: set token_rule"),
        (dict(token_rule="pythia", revision_tokens=(1,)), "token_rule or revision_tokens, not"),
        (dict(revisions=("step0",), token_rule="pythia", final_revision="step1"), "positive"),
        (dict(token_rule="olmo"), "unknown token_rule 'olmo'; known: olmo2, pythia"),
    ],
)
def test_bad_suite_models_fail_by_name(fields, message):
    with pytest.raises(ValueError, match=message):
        suites.checkpoints(_model(hf_source="org/suite", **fields))


def test_a_suite_model_is_not_also_pretrained_or_given_a_model_gin():
    lora = sweep.MethodGrid("lora", "gin/methods/lora.gin", (10,), "LORA_RANK", 4)
    for extra in (dict(model_gin="t5x_configs/models/tiny_1.gin"), dict(pretrain_steps=5)):
        model = _model(hf_source="org/suite", **extra)
        study = sweep.Study("s", "t", None, (model,), (lora,), "m")
        with pytest.raises(
            ValueError, match=f"base model 'm' has hf_source.*drop {next(iter(extra))}"
        ):
            sweep.expand(study, "/o")
    in_house = sweep.Study(
        "s", "t", "p", (_model(model_gin="x.gin", pretrain_steps=5),), (lora,), "m"
    )
    with pytest.raises(ValueError, match="set Study.tokens_per_pretrain_step"):
        sweep.expand(in_house, "/o")
    with pytest.raises(
        ValueError, match="revisions, revision_tokens and token_rule need hf_source"
    ):
        sweep.expand(
            sweep.Study(
                "s", "t", "p", (_model(model_gin="x", token_rule="pythia"),), (lora,), "m", 1
            ),
            "/o",
        )


# --- the suite study gins --------------------------------------------------------------------


def _family(name: str) -> str:
    return name.split("_")[0]


def _axis(run, study) -> str:
    method = {m.name: m for m in study.methods}[run.record["method"]]
    if run.record["revision"] not in {m.final_revision for m in study.base_models}:
        return "pretrain_data"
    if run.record["pet_size"] != method.default_size:
        return "pet_size"
    return "model_size"


@pytest.mark.parametrize("name", sorted(PAPER_OF))
def test_suite_gins_expand_to_the_three_axes(name):
    study = _study(name)
    sizes, hub_ids, revisions = SUITES[_family(name)]
    assert [m.name for m in study.base_models] == sizes
    assert [m.hf_source for m in study.base_models] == hub_ids
    assert study.default_model == "1b" and study.pretrain_task is None
    assert list(study.base_models[sizes.index("1b")].revisions) == revisions
    runs = sweep.expand(study, "/o")
    assert all(r.kind == "finetune" and r.depends_on is None for r in runs)
    axes = collections.Counter(_axis(r, study) for r in runs)
    assert (axes["model_size"], axes["pretrain_data"], axes["pet_size"]) == AXES[name]
    for run in runs:
        # hf.gin last, HF_CHECKPOINT = the run's revision, no model gin, no INITIAL_... binding.
        assert run.gin_files[0] == sweep.FINETUNE_GIN and run.gin_files[-1] == sweep.HF_GIN
        model = next(m for m in study.base_models if m.name == run.record["model_name"])
        assert run.bindings[1] == f"HF_CHECKPOINT='{model.hf_source}@{run.record['revision']}'"
        assert not any(b.startswith("INITIAL_CHECKPOINT_PATH") for b in run.bindings)
        assert run.record["pretrain_tokens"] == suites.tokens_of(
            model.token_rule, run.record["revision"]
        )
    # PET sizes and intermediate revisions on the 1B model only (PAPER.md §2).
    assert {r.record["model_name"] for r in runs if _axis(r, study) != "model_size"} == {"1b"}


@pytest.mark.parametrize("name", sorted(PAPER_OF))
def test_suite_gins_copy_the_paper_grids_and_recipe(name):
    suite, paper = _study(name), _study(PAPER_OF[name])
    assert suite.methods == paper.methods  # D_f grids, PET sizes, learning rates, batches
    assert (suite.seeds, suite.held_out, suite.gin_files) == (
        paper.seeds,
        paper.held_out,
        paper.gin_files,
    )
    assert suite.generation_metrics == paper.generation_metrics
    assert list(suite.finetune_bindings) == [
        *paper.finetune_bindings[:-1],
        "HF_DTYPE = 'bfloat16'",
        paper.finetune_bindings[-1],
    ]
    assert suite.task == paper.task


def test_pythia_pretraining_axis_and_its_held_out_checkpoint():
    study = _study("pythia_wmt14_ende")
    one_b = [r.record for r in sweep.expand(study, "/o") if r.record["model_name"] == "1b"]
    tokens = sorted({r["pretrain_tokens"] for r in one_b})
    # 1/3, 1/2, 2/3, 5/6 and all of Pythia's 143,000 steps: 100.7B ... 299.9B.
    assert tokens == [s * PYTHIA_STEP for s in (48_000, 72_000, 96_000, 119_000, 143_000)]
    lora = [r for r in one_b if r["method"] == "lora" and r["pet_size"] == 4]
    x = np.array([r["pretrain_tokens"] for r in lora], float)
    d_f = np.array([r["finetune_examples"] for r in lora], float)
    held = procedure.held_out_points("pretrain_tokens", x, d_f, "paper")
    assert set(x[held & (d_f < d_f.max())]) == {119_000 * PYTHIA_STEP}  # as the paper's 209B


def test_suite_run_configs_parse_with_hf_gin():
    study = _study("pythia_wmt19_enzh")
    runs = sweep.expand(study, "/o")
    for run in (runs[0], next(r for r in runs if r.record["pet_size"] == 600)):
        flags.parse_gin(run.gin_files, [*run.bindings, "MODEL_DIR='/o/m'"])
        import gin

        assert gin.query_parameter("%HF_CHECKPOINT") == run.bindings[1].split("=", 1)[1].strip("'")
        assert gin.query_parameter("%HF_DTYPE") == "bfloat16"
        assert gin.query_parameter("%TRAIN_STEPS") == (
            300_000 if run.record["method"] == "fmt" else 200_000
        )


# --- completeness ---------------------------------------------------------------------------


def _hf_dir(directory, shards=("model-1.safetensors", "model-2.safetensors"), tokenizer=True):
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    if tokenizer:
        (directory / "tokenizer.json").write_text("{}")
    weight_map = {f"w{i}": shard for i, shard in enumerate(shards)}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for shard in shards:
        (directory / shard).write_bytes(b"")


def _local_suite(root):
    """DIR/step1 complete; step2 lacks a shard; step3 lacks tokenizer.json; step4 is absent;
    the final revision is DIR itself (single-file weights)."""
    _hf_dir(root / "step1")
    _hf_dir(root / "step2")
    os.remove(root / "step2" / "model-2.safetensors")
    _hf_dir(root / "step3", tokenizer=False)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (root / name).write_text("{}")
    return sweep.BaseModel(
        name="tiny",
        hf_source=str(root),
        revisions=("step1", "step2", "step3", "step4"),
        final_revision="step9",
        token_rule="pythia",
    )


def _suite_study(model) -> sweep.Study:
    lora = sweep.MethodGrid("lora", "gin/methods/lora.gin", (16,), "LORA_RANK", 4)
    return sweep.Study("suite", "debian_l10n_translate_en_de", None, (model,), (lora,), "tiny")


def test_one_error_lists_every_missing_revision_shard_and_tokenizer(tmp_path):
    study = _suite_study(_local_suite(tmp_path))
    with pytest.raises(suites.SuiteIncompleteError) as error:
        suites.check_complete(sweep.suite_checkpoints(study))
    message = str(error.value)
    assert message.startswith("3 of the study's 5 suite checkpoints are missing or incomplete")
    assert (
        f"model 'tiny' revision 'step2' ({tmp_path}/step2): model-2.safetensors {LISTED}" in message
    )
    assert f"revision 'step3' ({tmp_path}/step3): tokenizer.json;" in message
    assert f"revision 'step4' ({tmp_path}/step4): no such directory" in message
    assert "step1" not in message and "step9" not in message


def test_a_study_over_an_incomplete_suite_fails_before_any_run(tmp_path):
    out = tmp_path / "out"
    study = _suite_study(_local_suite(tmp_path / "suite"))
    with pytest.raises(suites.SuiteIncompleteError, match="step4.*no such directory"):
        runner.run_study(study, str(out))
    assert not (out / "plan.json").exists() and not (out / "runs").exists()
    stores = store.open_all(str(out))
    assert [s.rows() for s in stores] in ([], [[]])  # no run recorded, not even as failed
    for s in stores:
        s.close()


def _cache(repo: str, revision: str, names: dict[str, str]) -> None:
    """Writes `names` into the Hugging Face cache as revision `revision` of `repo`."""
    from huggingface_hub import constants  # HF_HOME is the session's (tests/conftest.py)

    root = os.path.join(constants.HF_HUB_CACHE, f"models--{repo.replace('/', '--')}")
    commit = uuid.uuid4().hex + "0" * 8
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    with open(os.path.join(root, "refs", revision), "w") as f:
        f.write(commit)
    for name, text in names.items():
        path = os.path.join(root, "snapshots", commit, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def test_hub_revisions_offline_are_checked_in_the_cache():
    repo = f"ft-test/suite-{uuid.uuid4().hex[:8]}"
    index = json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    _cache(repo, "step1", {"config.json": "{}", "tokenizer.json": "{}", "model.safetensors": ""})
    _cache(
        repo,
        "step2",
        {"config.json": "{}", "model.safetensors.index.json": index, "model-1.safetensors": ""},
    )
    model = _model(
        hf_source=repo,
        revisions=("step2", "step3"),
        final_revision="step1",
        revision_tokens=(2, 3, 1),
    )
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py
    lines = suites.missing(suites.checkpoints(model))
    assert lines == [
        f"model 'm' revision 'step2' ({repo}@step2): tokenizer.json, model-2.safetensors {LISTED}",
        f"model 'm' revision 'step3' ({repo}@step3): not in the local Hugging Face cache "
        "(HF_HUB_OFFLINE is set): download it where a network is (huggingface-cli download "
        f"{repo} --revision step3) or give a local directory",
    ]


def test_hub_revisions_online_are_checked_by_refs_and_file_lists(monkeypatch, tmp_path):
    import huggingface_hub

    index = tmp_path / "index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors"}}))
    files = {
        "step1": {"config.json", "tokenizer.json", "model.safetensors"},
        "step2": {
            "config.json",
            "tokenizer.json",
            "model.safetensors.index.json",
            "s-1.safetensors",
        },
        "step3": {"config.json", "pytorch_model.bin"},  # an older revision: torch weights
    }
    calls = collections.Counter()

    def refs(repo):
        calls["refs"] += 1
        if repo != "org/suite":
            missing = huggingface_hub.errors.RepositoryNotFoundError  # what the hub raises
            error = missing.__new__(missing)  # (its constructor wants an HTTP response)
            Exception.__init__(error, f"404: {repo}")
            raise error
        branch = collections.namedtuple("Ref", "name")
        return collections.namedtuple("Refs", "branches tags")([branch(n) for n in files], [])

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "list_repo_refs", refs)
    monkeypatch.setattr(
        huggingface_hub, "list_repo_files", lambda repo, revision: sorted(files[revision])
    )
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, revision: str(index))
    model = _model(
        hf_source="org/suite",
        revisions=("step2", "step3", "step7"),
        final_revision="step1",
        token_rule="pythia",
    )
    gone = _model(name="g", hf_source="org/gone", final_revision="step1", token_rule="pythia")
    lines = suites.missing([*suites.checkpoints(model), *suites.checkpoints(gone)])
    assert lines == [
        f"model 'm' revision 'step2' (org/suite@step2): s-2.safetensors {LISTED}",
        "model 'm' revision 'step3' (org/suite@step3): tokenizer.json",
        "model 'm' revision 'step7' (org/suite@step7): no such revision (not a branch or tag "
        "of the repository)",
        "model 'g' revision 'step1' (org/gone@step1): no such repository on the hub",
    ]
    assert calls["refs"] == 2  # once per repository
