"""A KV cache that grows in place: a token step writes one position instead of copying the whole cache.

transformers' ``DynamicLayer`` concatenates the new keys and values onto the
old every step, which allocates a fresh tensor the size of the layer's whole
cache and copies it: at 8 rows and 1,800 positions a decode step took 400 ms
on a CPU against 125 ms here (BENCHMARKS.md, row 6b). Here a layer's keys and
values are views of buffers with room to spare: a step writes its positions
in place, and only a full buffer is copied into a larger one, every
``GROWTH`` positions.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Positions of headroom a buffer gains when it is full: one copy every GROWTH steps, and
# at most this much unused memory per row and layer.
GROWTH = 64


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of buffers with headroom.

    Whoever replaces ``keys`` and ``values`` outright (the batcher merging or
    dropping rows, transformers reordering beams) leaves them outside the
    buffers; the next update moves them into new ones.
    """

    # DynamicLayer's own attributes, restated because the type check does not read transformers.
    keys: torch.Tensor | None
    values: torch.Tensor | None
    _buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.get_seq_length()
        length = held + key_states.shape[-2]
        old_keys, old_values = self.keys, self.values
        assert old_keys is not None and old_values is not None, "set by lazy_initialization"
        if self._buffers is None or not _fits(self._buffers[0], old_keys, key_states, length):
            self._buffers = (
                _grown(old_keys, key_states, held, length),
                _grown(old_values, value_states, held, length),
            )
        keys, values = self._buffers
        keys[:, :, held:length] = key_states
        values[:, :, held:length] = value_states
        self.keys, self.values = keys[:, :, :length], values[:, :, :length]
        return self.keys, self.values


def _fits(buffer: torch.Tensor, keys: torch.Tensor, key_states: torch.Tensor, length: int) -> bool:
    """Whether ``keys`` still views ``buffer``, and the buffer has room for ``length`` positions."""
    return (
        buffer.shape[-2] >= length
        and keys.data_ptr() == buffer.data_ptr()
        and keys.stride() == buffer.stride()
        and keys.shape[:2] == buffer.shape[:2] == key_states.shape[:2]
    )


def growing_cache(config: Any) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose full-attention layers grow in place (sliding ones are kept)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _grown(old: torch.Tensor, new: torch.Tensor, kept: int, needed: int) -> torch.Tensor:
    """A buffer for ``needed`` positions and ``GROWTH`` more, holding the first ``kept`` positions of ``old``."""
    buffer = new.new_empty((*new.shape[:2], needed + GROWTH, new.shape[-1]))
    if kept:
        buffer[:, :, :kept] = old[:, :, :kept]
    return buffer


def cache_argument(model: Any) -> str:
    """The name under which ``model``'s forward takes the cache: transformers 5.24 renamed it ``cache``
    (``past_key_values`` goes in 5.40)."""
    forward = getattr(model, "forward", model)
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
