"""The in-place KV cache: the same attention as transformers' own cache, without copying it every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, MistralConfig
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from inference import TINY_MODELS, Registry
from inference.local.backend import TransformersBackend
from inference.local.kvcache import GROWTH, GrowingLayer, growing_cache

STEPS = GROWTH + 10  # crosses one growth of the buffers


@pytest.fixture(scope="module")
def backend(models_dir: Path) -> TransformersBackend:
    return TransformersBackend(models_dir=models_dir, max_loaded=4)


def decode(model, cache, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> tuple[list[torch.Tensor], list[int]]:
    """Greedy decoding by hand, as the batcher does: each step's logits, and where layer 0's keys live."""
    logits, where = [], []
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                    cache=cache, use_cache=True)  # fmt: skip
        for _ in range(steps):
            logits.append(out.logits[:, -1])
            where.append(cache.layers[0].keys.data_ptr())
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = model(input_ids=out.logits[:, -1].argmax(-1, keepdim=True), attention_mask=mask,
                        position_ids=mask.sum(1, keepdim=True) - 1, cache=cache, use_cache=True)  # fmt: skip
    return logits, where


@pytest.mark.parametrize("model_id", [s.id for s in TINY_MODELS])
def test_growing_in_place_gives_the_same_logits_as_concatenating(backend: TransformersBackend, model_id: str) -> None:
    loaded = backend.load(Registry.of(TINY_MODELS).get(model_id))
    model = loaded.model
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [0, 0, 0, 12, 13, 14, 15]])  # the second row left-padded
    mask = (ids != 0).long()
    cache = growing_cache(model.config)
    assert all(type(layer) is GrowingLayer for layer in cache.layers)
    grown, where = decode(model, cache, ids, mask, STEPS)
    concatenated, _ = decode(model, DynamicCache(config=model.config), ids, mask, STEPS)
    for step, (a, b) in enumerate(zip(grown, concatenated, strict=True)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"step {step}")
    # A step writes in place: the keys move only when the buffer is full, once within STEPS.
    assert len(set(where)) == 2


def test_keys_replaced_outright_move_into_a_new_buffer() -> None:
    """The batcher merges and drops rows by assigning new tensors; the next update must build on those."""
    layer, plain = GrowingLayer(), DynamicLayer()
    first = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)
    for each in (layer, plain):
        each.update(first, first + 1)
        each.keys, each.values = each.keys[[1]], each.values[[1]]  # row 0 leaves
    step = torch.full((1, 3, 1, 2), -1.0)
    for each in (layer, plain):
        each.update(step, step)
    assert torch.equal(layer.keys, plain.keys) and torch.equal(layer.values, plain.values)
    assert layer.keys.shape == (1, 3, 5, 2)


def test_sliding_window_layers_are_left_to_transformers() -> None:
    config = MistralConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=64, num_attention_heads=4,
                           num_key_value_heads=4, sliding_window=16)  # fmt: skip
    assert all(type(layer) is DynamicSlidingWindowLayer for layer in growing_cache(config).layers)
