"""Tokens per character of the held-out debian_l10n En-Zh pairs: our En+Zh SentencePiece
vocabulary against a Pythia-style byte-level BPE (the local fixture of
tests/data/pythia_style_tokenizer.py, NOT Pythia's own vocabulary: GPT-NeoX's tokenizer setup
trained offline on English text only). The figures are the ones gin/studies/pythia_wmt19_enzh.gin
states in its header.
"""

import os
import re

import pytest

from tests.data import pythia_style_tokenizer as fixture

tokenizers = pytest.importorskip("tokenizers")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN = os.path.join(REPO, "gin", "studies", "pythia_wmt19_enzh.gin")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def test_the_fixture_has_gpt_neox_setup_and_no_cjk_merges():
    tokenizer = fixture.load_fixture()
    config = tokenizer.to_str()
    assert tokenizer.get_vocab_size() == fixture.FIXTURE_VOCAB == 8192
    assert [tokenizer.id_to_token(i) for i in (0, 1)] == fixture.SPECIALS
    for part in ('"type":"NFC"', '"type":"ByteLevel","add_prefix_space":false'):
        assert part in config.replace(" ", ""), part
    decoded = [tokenizer.decode([i]) for i in range(2, tokenizer.get_vocab_size())]
    assert not [t for t in decoded if _CJK.search(t)]  # trained on English only
    # Byte-level: any text round-trips; a CJK character is its 3 UTF-8 bytes.
    text = "Datei öffnen: 打开文件"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert len(tokenizer.encode("打开文件").ids) == 12


def _row(label: str, english: float, chinese: float) -> str:
    return f"#                     {label:<30}{english:.3f}            {chinese:.3f}"


def test_measured_tokens_per_character_are_the_gin_headers():
    got = fixture.figures(fixture.load_fixture())
    assert len(fixture.held_out_pairs()) == 1558
    header = open(GIN).read()
    assert _row("ours (SentencePiece 8192)", got["ours_en"], got["ours_zh"]) in header
    assert _row("Pythia-style BPE 8192", got["bpe_en"], got["bpe_zh"]) in header
    # What the header concludes: Chinese costs ~3.3x the tokens, English about the same.
    assert 3.2 < got["bpe_zh"] / got["ours_zh"] < 3.4
    assert 0.9 < got["bpe_en"] / got["ours_en"] < 1.0
