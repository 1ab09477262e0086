"""`ft-scaling convert` round trip (HF -> orbax -> HF: the same tensors, transformers loads it)
and `ft-scaling info --hf` (the architecture and transformers' parameter count)."""

import numpy as np
import pytest
from flax import traverse_util

from ft_scaling import cli
from ft_scaling.models.hf import load_pretrained
from ft_scaling.train import checkpoints
from tests.models.hf.hf_checkpoints import checkpoint, hf_logits, hf_model, padded_batch

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("family", ["llama2_tied", "gpt_neox"])
def test_hf_to_orbax_to_hf_round_trip(family, tmp_path):
    source, orbax_dir, hf_dir = checkpoint(family), tmp_path / "orbax", tmp_path / "hf"
    assert cli.main(["convert", "hf-to-orbax", source, str(orbax_dir)]) == 0
    converted, meta = checkpoints.load_params(str(orbax_dir))
    imported = traverse_util.flatten_dict(load_pretrained(source)[1])
    assert meta["hf_source"] == source and meta["base_checkpoint"] is None
    for path, leaf in traverse_util.flatten_dict(converted).items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(imported[path]))
    assert (orbax_dir / "hf_source" / "config.json").exists()

    assert cli.main(["convert", "orbax-to-hf", str(orbax_dir), str(hf_dir)]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    original = hf_model(family)
    for name, tensor in original.state_dict().items():
        np.testing.assert_array_equal(exported.state_dict()[name].numpy(), tensor.numpy())
    tokens, _, segments, positions = padded_batch()
    np.testing.assert_array_equal(
        hf_logits(exported, tokens, segments, positions),
        hf_logits(original, tokens, segments, positions),
    )


def test_orbax_to_hf_without_a_source_is_refused(tmp_path, capsys):
    orbax_dir = tmp_path / "orbax"
    assert cli.main(["convert", "hf-to-orbax", checkpoint("llama2"), str(orbax_dir)]) == 0
    (orbax_dir / "hf_source" / "config.json").unlink()
    (orbax_dir / "hf_source").rename(tmp_path / "elsewhere")
    assert cli.main(["convert", "orbax-to-hf", str(orbax_dir), str(tmp_path / "hf")]) == 1
    assert (
        "descends from no Hugging Face checkpoint; pass --source=HF_DIR" in capsys.readouterr().err
    )


@pytest.mark.parametrize("family", ["llama2", "gpt_neox"])
def test_info_prints_the_architecture_and_transformers_count(family, capsys):
    assert cli.main(["info", f"--hf={checkpoint(family)}"]) == 0
    out = capsys.readouterr().out
    architecture = hf_model(family).config.architectures[0]
    assert out.startswith(f"{checkpoint(family)}: {architecture}\nModelConfig(")
    count = sum(p.numel() for p in hf_model(family).parameters())
    assert f"params={count:,} " in out
