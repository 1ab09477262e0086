"""seqio tasks of GLUE CoLA / MNLI under tfds.testing.mock_data, the local OOD sets, and the
errors that name bad settings."""

import pytest
import tensorflow_datasets as tfds

from ft_scaling.classify import local_sets, patterns, run, tasks


@pytest.fixture(autouse=True)
def _fresh_reads():
    tasks._read.cache_clear()  # mock data differs from test to test
    yield
    tasks._read.cache_clear()


def test_glue_tasks_read_text_fields_and_labels():
    with tfds.testing.mock_data(num_examples=12):
        mnli = tasks.get_task("mnli")
        raw = list(tfds.load("glue/mnli", split="validation_mismatched").as_numpy_iterator())
        ood = tasks.load_examples(mnli, tasks.ood_set(mnli, "default"))
        cola = tasks.get_task("cola")
        train = tasks.load_examples(cola)
    assert [(e.texts, e.label) for e in ood] == [
        ((r["premise"].decode(), r["hypothesis"].decode()), int(r["label"])) for r in raw
    ]
    assert len(train) == 12 and all(len(e.texts) == 1 and e.label in (0, 1) for e in train)


def test_local_ood_sets(tmp_path, monkeypatch):
    cola = tmp_path / "out_of_domain_dev.tsv"
    cola.write_text("clc95\t1\t\tThe book was read.\nclc95\t0\t*\tBook the read was.\n")
    hans = tmp_path / "heuristics_evaluation_set.txt"
    header = "gold_label\tsentence1_binary_parse\tsentence1\tsentence2\tpairID\n"
    hans.write_text(
        header + "entailment\t(x)\tThe doctor saw the cat.\tThe doctor saw.\tex0\n"
        "non-entailment\t(x)\tThe cat saw the doctor.\tThe doctor saw the cat.\tex1\n"
    )
    monkeypatch.setenv(local_sets.COLA_OOD_ENV, str(cola))
    monkeypatch.setenv(local_sets.HANS_ENV, str(hans))
    cola_task = tasks.TASKS["cola"]
    cola_ood = tasks.load_examples(cola_task, tasks.ood_set(cola_task, "cola_ood"))
    assert [(e.texts, e.label) for e in cola_ood] == [
        (("The book was read.",), 1),
        (("Book the read was.",), 0),
    ]
    hans_set = tasks.ood_set(tasks.TASKS["mnli"], "hans")
    assert hans_set.binary
    examples = tasks.load_examples(tasks.TASKS["mnli"], hans_set)
    assert [e.label for e in examples] == [0, 1]
    assert examples[1].texts == ("The cat saw the doctor.", "The doctor saw the cat.")


def test_missing_local_file_says_how_to_get_it(monkeypatch):
    monkeypatch.delenv(local_sets.HANS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="FT_SCALING_HANS_PATH is not set.*tommccoy1"):
        local_sets.hans()


def test_bad_settings_name_the_key_and_the_allowed_values():
    with pytest.raises(ValueError, match=r"unknown classification task 'sst2'.*'cola'"):
        tasks.get_task("sst2")
    with pytest.raises(ValueError, match=r"OOD_SET='hans'.*'cola_ood'"):
        tasks.ood_set(tasks.TASKS["cola"], "hans")
    with pytest.raises(ValueError, match=r"PATTERN='mnli_question'.*'cola_question'"):
        patterns.get_pattern("mnli_question", "cola")
    with pytest.raises(ValueError, match=r"MethodSpec.kind='lm'.*'vanilla'"):
        run.MethodSpec("x", "lm")
    with pytest.raises(KeyError, match="unknown finetuning method 'qlora'"):
        run.MethodSpec("x", "pbft", tuning="qlora")
    with pytest.raises(ValueError, match="RunSettings.optimizer='lion'"):
        run.RunSettings(optimizer="lion")


def test_every_pattern_names_its_task_fields_and_one_verbalizer_per_class():
    for name, pattern in patterns.PATTERNS.items():
        task = tasks.get_task(pattern.task)
        assert len(pattern.verbalizers) == task.num_classes, name
        rendered = pattern.render(tuple(f"<{f}>" for f in task.fields))
        assert all(f"<{f}>" in rendered for f in task.fields), name
