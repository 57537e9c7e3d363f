"""The real LLM-jp tokenizers, built into fast tokenizers, match SentencePiece exactly."""

from __future__ import annotations

import json

import pytest
import sentencepiece as spm
from transformers import PreTrainedTokenizerFast

from tests.conftest import SP_MODELS, TOKENIZERS


@pytest.mark.parametrize("version", list(SP_MODELS))
def test_ids_match_sentencepiece(real_tokenizers: dict, japanese_lines: list[str], version: str) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODELS[version]))
    tok = real_tokenizers[version]
    assert len(tok) == sp.get_piece_size()
    mismatched = [line for line in japanese_lines if tok.encode(line, add_special_tokens=False) != sp.encode(line)]
    assert mismatched == []
    for line in japanese_lines:
        ids = sp.encode(line)
        assert tok.decode(ids) == sp.decode(ids)


def test_matches_the_hub_tokenizer_of_llmjp_13b_v11(real_tokenizers: dict, japanese_lines: list[str]) -> None:
    """The v1.1 model's published tokenizer.json agrees with the conversion on ids."""
    hub_dir = TOKENIZERS / "hf/ver2.1/code10k_en20k_ja30k.ver2.1_hf_fast"
    hub = PreTrainedTokenizerFast(tokenizer_file=str(hub_dir / "tokenizer.json"))
    ours = real_tokenizers["ver2.1"]
    assert json.loads((hub_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    for line in japanese_lines:
        if line.strip():
            assert hub.encode(line, add_special_tokens=False) == ours.encode(line, add_special_tokens=False), line
