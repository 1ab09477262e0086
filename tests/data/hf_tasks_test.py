"""Every task in an imported model's own tokenizer: `tasks.register_hf_variant`.

The variant keeps the parent's name (untouched), source, splits and metrics; its features are
in the checkpoint's tokenizer.json, BOS first when the tokenizer adds one, mixtures map member
by member, and D_f subsets hold the parent's examples.
"""

import json

import pytest
import seqio

from ft_scaling.data import hf_vocab, subsets, tasks
from ft_scaling.data.vocab import get_vocabulary

tokenizers = pytest.importorskip("tokenizers")

TEXTS = [
    "Translate English to German: Open the file. Datei öffnen.",
    "Summarize the following document in English: the package installs a library.",
] * 20


def _checkpoint_dir(path, add_bos: bool, embedding_rows: int = 320):
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TEXTS, trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": add_bos}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "config.json").write_text(json.dumps({"vocab_size": embedding_rows}))
    return str(path)


@pytest.fixture(scope="module")
def llama_like(tmp_path_factory):
    return _checkpoint_dir(tmp_path_factory.mktemp("bos"), add_bos=True)


@pytest.fixture(scope="module")
def neox_like(tmp_path_factory):
    return _checkpoint_dir(tmp_path_factory.mktemp("nobos"), add_bos=False)


@pytest.mark.parametrize(
    "name",
    ["wmt14_ende", "wmt19_enzh", "debian_l10n_translate_en_de", "debian_l10n_pretrain_en_de"],
)
def test_variant_has_the_checkpoints_vocabulary_and_the_parent_is_unchanged(name, llama_like):
    variant = tasks.register_hf_variant(name, llama_like)
    vocabulary = hf_vocab.checkpoint_vocabulary(llama_like)
    assert variant == f"hf_{vocabulary.digest}_{name}"
    assert tasks.register_hf_variant(name, llama_like) == variant  # idempotent
    parent, task = seqio.get_mixture_or_task(name), seqio.get_mixture_or_task(variant)
    assert set(task.output_features) == set(parent.output_features)
    for key, feature in task.output_features.items():
        assert feature.vocabulary == vocabulary
        assert feature.add_eos == parent.output_features[key].add_eos
        assert parent.output_features[key].vocabulary == get_vocabulary(
            "debian_l10n_enzh" if "zh" in name else "debian_l10n_ende"
        )
    assert task.source is parent.source and task.metric_fns == parent.metric_fns


def test_mixture_variant_maps_members_at_the_parents_rates(neox_like):
    variant = tasks.register_hf_variant("debian_l10n_summarize", neox_like)
    mixture, parent = (
        seqio.get_mixture_or_task(variant),
        seqio.get_mixture_or_task("debian_l10n_summarize"),
    )
    digest = hf_vocab.checkpoint_vocabulary(neox_like).digest
    assert [t.name for t in mixture.tasks] == [f"hf_{digest}_{t.name}" for t in parent.tasks]
    for task, parent_task in zip(mixture.tasks, parent.tasks, strict=True):
        assert mixture.get_rate(task) == parent.get_rate(parent_task)
    mlsum = seqio.get_mixture_or_task(tasks.register_hf_variant("mlsum", neox_like))
    assert len(mlsum.tasks) == 4  # de, es, fr, en: registered without reading any data


def test_bos_first_only_when_the_tokenizer_adds_it(llama_like, neox_like):
    name, lengths = "debian_l10n_translate_en_de", {"inputs": 64, "targets": 64}
    for directory, bos in ((llama_like, True), (neox_like, False)):
        vocabulary = hf_vocab.checkpoint_vocabulary(directory)
        task = seqio.get_mixture_or_task(tasks.register_hf_variant(name, directory))
        example = next(
            task.get_dataset(lengths, split="validation", shuffle=False).as_numpy_iterator()
        )
        inputs, targets = list(example["inputs"]), list(example["targets"])
        assert (inputs[0] == vocabulary.bos_id) == bos
        assert targets[0] != vocabulary.bos_id and targets[-1] == inputs[-1] == vocabulary.eos_id
        text = vocabulary.decode(inputs[1:] if bos else inputs)
        assert text.startswith("Translate English to German: ")


def test_finetune_subsets_hold_the_parents_examples(llama_like):
    name = "debian_l10n_translate_en_de"
    variant = tasks.register_hf_variant(name, llama_like)
    vocabulary = hf_vocab.checkpoint_vocabulary(llama_like)
    ours = get_vocabulary("debian_l10n_ende")

    def texts(task_name, vocab):
        dataset = subsets.finetune_subset(task_name, "train", 12, seed=1)
        return [vocab.decode(list(ex["targets"])) for ex in dataset.as_numpy_iterator()]

    assert texts(variant, vocabulary) == texts(name, ours)


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    directory = _checkpoint_dir(tmp_path, add_bos=False, embedding_rows=256)
    with pytest.raises(ValueError, match="300 ids but the model's embedding has only 256 rows"):
        tasks.register_hf_variant("wmt14_ende", directory)
