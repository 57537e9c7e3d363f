"""The two benchmark models, at the two speeds the targets name.

- a small Llama over the real 99k LLM-jp vocabulary: about 100 tok/s here;
- a small Mixtral (8 experts, 2 active) over the app's 2.2k-piece test
  vocabulary: about 800 tok/s here.

Greedy decoding from their random weights runs the full length without an
end-of-sequence token, so every run generates the same, fixed number of tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MixtralConfig, PretrainedConfig, PreTrainedTokenizerFast

from inference.local import tiny
from inference.local.spm import from_sentencepiece

VER3 = (
    Path(__file__).resolve().parents[2]
    / "shared/data/llm-jp-tokenizer/models/ver3.0/llm-jp-tokenizer-100k.ver3.0b1.model"
)


def _save(path: Path, tokenizer: PreTrainedTokenizerFast, config: PretrainedConfig) -> Path:
    if not (path / "config.json").exists():
        torch.manual_seed(tiny.SEED)
        AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def _ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def real_vocab_llama(path: Path) -> Path:
    """Llama, hidden 256, 2 layers, the real ver3 vocabulary (99,574 pieces)."""
    if not VER3.exists():
        raise FileNotFoundError(f"the LLM-jp tokenizer is needed for this row: {VER3}")
    tokenizer = from_sentencepiece(VER3)
    config = LlamaConfig(
        hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
        max_position_embeddings=4096, tie_word_embeddings=False, **_ids(tokenizer),
    )  # fmt: skip
    return _save(path, tokenizer, config)


def small_vocab_mixtral(path: Path) -> Path:
    """Mixtral, hidden 128, 3 layers, 8 experts (2 active), the 2.2k-piece test vocabulary."""
    tokenizer = tiny.tiny_tokenizer()
    config = MixtralConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096, tie_word_embeddings=False,
        **_ids(tokenizer),
    )  # fmt: skip
    return _save(path, tokenizer, config)


def llama_110m(path: Path) -> Path:
    """Llama, hidden 768, 12 layers (about 110M parameters), over the app's 2.2k-piece test vocabulary.

    The shape of a small real model, decoding at a speed set by reading its
    weights, as large models do on a GPU; the small vocabulary keeps the
    parameters in the layers, where batching shares them between requests.
    """
    tokenizer = tiny.tiny_tokenizer()
    config = LlamaConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
        max_position_embeddings=4096, tie_word_embeddings=False, **_ids(tokenizer),
    )  # fmt: skip
    return _save(path, tokenizer, config)
