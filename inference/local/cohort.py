"""Rows decoded together: one KV cache, left-padded to a common length, and each row's state.

A cohort's tensors change shape only when rows join (``merge``), leave
(``keep``) or are set apart (``split``); a token step appends one column.
A forward that fails part-way may have written its column into some layers
and not others: ``mark`` and ``rewind`` put every layer back, so the same
rows can be stepped again (whole, or split to find the row at fault).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from inference.local.sampler import RowOptions


class Cohort:
    """Rows sharing one KV cache; ``rows`` are the batcher's per-request objects, in cache order."""

    def __init__(
        self,
        rows: list[Any],
        cache: Any,
        mask: torch.Tensor,
        seen: torch.Tensor,
        last: torch.Tensor,
        options: RowOptions,
    ) -> None:
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [rows, length]: 1 where the cache holds a real token
        self.seen = seen  # [rows, vocab]: tokens present so far, for the repetition penalty
        self.last = last  # [rows]: each row's newest token, not yet in the cache
        self.options = options

    @property
    def solo(self) -> bool:
        """A cohort of one seeded sampled request, which never shares its batch."""
        return len(self.rows) == 1 and self.rows[0].request.solo

    def cells(self) -> int:
        """Cache positions held, padding included: rows × length."""
        return self.mask.shape[0] * self.mask.shape[1]

    def mark(self) -> list[int]:
        """Each layer's length now, for ``rewind``."""
        return [_length(layer) for layer in self.cache.layers]

    def rewind(self, marks: list[int]) -> None:
        """Drop what a failed forward appended to any layer."""
        for layer, length in zip(self.cache.layers, marks, strict=True):
            if _length(layer) > length:
                # A view of the same buffer: a growing layer keeps writing in place.
                layer.keys = layer.keys[:, :, :length]
                layer.values = layer.values[:, :, :length]

    def merge(self, other: Cohort) -> None:
        """Take ``other``'s rows into this cohort, left-padding the shorter cache."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)])
            mine.values = torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)])
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(other.mask, length, 1)])
        self.seen = torch.cat([self.seen, other.seen])
        self.last = torch.cat([self.last, other.last])
        self.options = self.options.cat(other.options)
        self.rows += other.rows

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep``, and drop padding columns that no row needs any more."""
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows = []
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.seen, self.last = self.mask[index], self.seen[index], self.last[index]
        self.options = self.options.select(index)
        unused = int(self.mask.cumsum(1).eq(0).all(0).sum())  # leading columns empty in every row
        self.mask = self.mask[:, unused:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, unused:]
            layer.values = layer.values[index, :, unused:]

    def split(self, take: list[int]) -> Cohort:
        """Move the rows at ``take`` into a cohort of their own (with a copy of their cache), and return it."""
        index = torch.tensor(take, device=self.mask.device)
        cache = copy.copy(self.cache)
        cache.layers = [copy.copy(layer) for layer in self.cache.layers]
        for layer in cache.layers:
            # Indexing copies: the new layer no longer views its original's buffer, and grows its own.
            layer.keys, layer.values = layer.keys[index], layer.values[index]
        other = Cohort(
            [self.rows[i] for i in take], cache, self.mask[index], self.seen[index], self.last[index],
            self.options.select(index),
        )  # fmt: skip
        self.keep([i for i in range(len(self.rows)) if i not in set(take)])
        return other


def _length(layer: Any) -> int:
    keys = getattr(layer, "keys", None)
    return 0 if keys is None or keys.dim() < 3 else keys.shape[-2]


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    short = length - t.shape[dim]
    if short == 0:
        return t
    shape = list(t.shape)
    shape[dim] = short
    return torch.cat([t.new_zeros(shape), t], dim=dim)
