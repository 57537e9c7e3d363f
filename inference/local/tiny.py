"""Tiny random-weight models of the four real architectures, built locally.

They let the whole demo (and its tests) run with no GPU and no hub. Each is
saved once under the data directory and then loaded through the same
``from_pretrained`` path as a real checkpoint. Their tokenizer is a small
SentencePiece-style Unigram with byte fallback, so streaming meets the same
partial-UTF-8 cases as the real LLM-jp tokenizers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from inference.lazy import BUILDING_MODELS
from inference.local.spm import SPACE, byte_pieces, unigram_tokenizer
from inference.registry import Architecture

# Bump when the builder changes, so cached copies are rebuilt.
BUILD_VERSION = "1"
SEED = 1234

_SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# Characters of the prompt templates and common test prompts, beyond the ranges below.
_EXTRA = "以下指示応答説明要求適切満書富士山教日本語何高一番東京大学情報研究所言語処理自然"


def _characters() -> list[str]:
    ranges = [
        range(0x21, 0x7F),  # ASCII
        range(0x3001, 0x3019),  # CJK punctuation 、。「」 etc.
        range(0x3041, 0x3097),  # hiragana
        range(0x30A1, 0x30FD),  # katakana and ー
        range(0xFF01, 0xFF5F),  # full-width forms
        range(0x4E00, 0x9FA0, 11),  # a thin sample of the CJK ideographs
    ]
    chars = dict.fromkeys(chr(c) for r in ranges for c in r)
    chars.update(dict.fromkeys(_EXTRA))
    return list(chars)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ~2.2k-piece byte-fallback Unigram tokenizer for Japanese and ASCII."""
    pieces = [(p, 0.0) for p in _SPECIAL] + [(b, 0.0) for b in byte_pieces()]
    pieces += (
        [(SPACE, -3.0)] + [(c, -5.0) for c in _characters()] + [(SPACE + c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    )
    tok = unigram_tokenizer(pieces, unk_id=0, special=_SPECIAL)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        clean_up_tokenization_spaces=False,
    )


def tiny_config(arch: Architecture, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """A small config of ``arch`` sized to ``tokenizer``'s vocabulary."""
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    # Mixtral is Llama with routed experts in place of the MLP: same shape otherwise.
    # Keyword arguments of several config classes, of several types.
    llama_shape: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }
    if arch is Architecture.LLAMA:
        return LlamaConfig(**llama_shape, **ids)
    if arch is Architecture.MIXTRAL:
        return MixtralConfig(num_local_experts=8, num_experts_per_tok=2, **llama_shape, **ids)
    if arch is Architecture.GPT2:
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=2048, **ids)
    if arch is Architecture.GPT_NEOX:
        return GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=2048,
            use_parallel_residual=True,
            **ids,
        )
    raise ValueError(f"no tiny config for {arch}")


def build(arch: Architecture, path: Path, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    """Write a random-weight ``arch`` model and its tokenizer to ``path``."""
    tokenizer = tokenizer or tiny_tokenizer()
    with BUILDING_MODELS:  # the seed is the process's: one model drawn at a time keeps each the same
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(tiny_config(arch, tokenizer), dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ensure(arch: Architecture, cache_dir: Path) -> Path:
    """The directory of the cached tiny ``arch`` model, building it on first use."""
    target = cache_dir / f"tiny-{arch.value}-v{BUILD_VERSION}"
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename into place, so a concurrent or
    # interrupted build never leaves a half-written model behind.
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=cache_dir))
    try:
        build(arch, staging)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
