"""Picking each row's next token: batched, numerically safe, and seeded the same way on every device.

Every row of a batch has its own options. They are held as tensors
(``RowOptions``), built when rows join or leave, not every step, and the
whole batch is sampled with a fixed sequence of tensor operations: no
per-row Python loop, no host synchronisation (the caller reads the tokens
once per step).

Randomness is counter-based: a row's draw at step ``n`` is a hash of
(seed, n), turned into a uniform number and used to invert the cumulative
distribution of the row's filtered probabilities. That is an exact
multinomial draw; it needs no ``torch.Generator`` (whose CPU and CUDA
streams differ and which cannot be batched), so a seeded row gives the
same reply on a CPU and a GPU whenever the probabilities agree. A row
without a seed gets a random one when it is admitted.

What a value means follows transformers' logits processors, in their
order: repetition penalty, temperature, top-k (ties with the k-th kept),
top-p (the smallest set whose mass reaches top_p, at least one token). The
edges are defined rather than left to floating point: a logit of +inf
means "only this token" (transformers would produce NaN), any temperature
above zero divides logits that were first shifted so the largest is 0
(so even 1e-30 cannot overflow: it tends to greedy, as it should), and
every row keeps at least its most likely token. A row whose logits hold a
NaN, or whose every logit is -inf, has no defined next token: it is
reported as failed (token ``FAILED``) and ends alone with a message; the
other rows are unaffected.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from inference.sampling import SamplingOptions

FAILED = -1
"""The token of a row whose next token is undefined (NaN logits, or nothing left to choose)."""

_MASK32 = 0xFFFFFFFF


@dataclass
class RowOptions:
    """Each row's sampling options as tensors on the model's device, and its draw counter."""

    temperature: torch.Tensor  # [rows] float32; 0 = greedy
    top_p: torch.Tensor  # [rows] float32; +inf where top_p is 1 (keeps everything, whatever the rounding)
    top_k: torch.Tensor  # [rows] int64; 0 = off
    penalty: torch.Tensor  # [rows, 1] float32
    seed: torch.Tensor  # [rows] int64, 32-bit values
    step: torch.Tensor  # [rows] int64: draws made so far
    filtering: bool  # whether any sampled row filters (top-k or top-p): the sort is skipped otherwise
    sampling: bool  # whether any row samples at all
    penalising: bool  # whether any row has a repetition penalty: otherwise ``seen`` is neither read nor kept

    @classmethod
    def of(cls, options: Sequence[SamplingOptions], device: torch.device | str) -> RowOptions:
        """Options for new rows; a row without a seed draws one now."""
        seeds = [o.seed if o.seed is not None else secrets.randbits(32) for o in options]
        return cls(
            temperature=torch.tensor([o.temperature for o in options], dtype=torch.float32, device=device),
            top_p=torch.tensor([o.top_p if o.top_p < 1 else math.inf for o in options], device=device),
            top_k=torch.tensor([o.top_k for o in options], dtype=torch.int64, device=device),
            penalty=torch.tensor([[o.repetition_penalty] for o in options], dtype=torch.float32, device=device),
            seed=torch.tensor(seeds, dtype=torch.int64, device=device),
            step=torch.zeros(len(options), dtype=torch.int64, device=device),
            filtering=any(o.temperature > 0 and (o.top_k > 0 or o.top_p < 1) for o in options),
            sampling=any(o.temperature > 0 for o in options),
            penalising=any(o.repetition_penalty != 1 for o in options),
        )

    def select(self, index: torch.Tensor) -> RowOptions:
        """The rows at ``index``, in that order."""
        return RowOptions(
            self.temperature[index], self.top_p[index], self.top_k[index], self.penalty[index],
            self.seed[index], self.step[index], self.filtering, self.sampling, self.penalising,
        )  # fmt: skip

    def cat(self, other: RowOptions) -> RowOptions:
        """These rows, then ``other``'s."""
        return RowOptions(
            torch.cat([self.temperature, other.temperature]), torch.cat([self.top_p, other.top_p]),
            torch.cat([self.top_k, other.top_k]), torch.cat([self.penalty, other.penalty]),
            torch.cat([self.seed, other.seed]), torch.cat([self.step, other.step]),
            self.filtering or other.filtering, self.sampling or other.sampling, self.penalising or other.penalising,
        )  # fmt: skip


def sample(logits: torch.Tensor, seen: torch.Tensor, rows: RowOptions) -> torch.Tensor:
    """Each row's next token (``FAILED`` where none is defined); advances each row's draw counter.

    ``logits`` is [rows, vocab] in any float dtype; ``seen`` [rows, vocab]
    marks the tokens present so far (for the repetition penalty).
    """
    x = logits.float()
    if rows.penalising:
        # As transformers applies it: divide positive logits, multiply negative ones.
        x = torch.where(seen, torch.where(x < 0, x * rows.penalty, x / rows.penalty), x)
    # The largest logit is NaN where any is (torch.max propagates NaN), -inf where nothing is left,
    # +inf where some token is certain (greedy then picks it).
    best, greedy = x.max(-1)
    failed = best.isnan() | best.isneginf()
    tokens = greedy
    if rows.sampling:
        tokens = torch.where(rows.temperature > 0, _draw(x, best, rows), greedy)
    rows.step += 1
    return torch.where(failed, FAILED, tokens)


def _draw(x: torch.Tensor, best: torch.Tensor, rows: RowOptions) -> torch.Tensor:
    """A token drawn from each row's tempered, filtered distribution (greedy rows draw too; their draw is unused)."""
    # +inf means certainty: such a row chooses among its +inf tokens only.
    certain = best.isposinf().unsqueeze(1)
    x = torch.where(certain, torch.where(x.isposinf(), 0.0, -math.inf), x)
    # Shifted so the largest logit is 0 before dividing: no temperature can overflow it.
    shift = torch.where(best.isfinite(), best, 0.0).unsqueeze(1)
    temperature = torch.where(rows.temperature > 0, rows.temperature, 1.0).unsqueeze(1)
    z = (x - shift) / temperature
    order = None
    if rows.filtering:
        z, order = torch.sort(z, dim=-1, descending=True)
        vocab = z.shape[-1]
        k = torch.where(rows.top_k > 0, rows.top_k, vocab).clamp(max=vocab)
        kth = z.gather(1, (k - 1).unsqueeze(1))
        z = z.masked_fill(z < kth, -math.inf)  # ties with the k-th are kept, as in transformers
        probs = z.softmax(-1)
        # The most likely tokens whose mass reaches top_p; the first is always kept.
        drop = (probs.cumsum(-1) - probs) >= rows.top_p.unsqueeze(1)
        drop[:, 0] = False
        z = z.masked_fill(drop, -math.inf)
    probs = z.softmax(-1)
    cumulative = probs.cumsum(-1)
    target = (uniform(rows.seed, rows.step).unsqueeze(1) * cumulative[:, -1:].double()).to(cumulative.dtype)
    index = torch.searchsorted(cumulative, target, right=True).clamp(max=z.shape[-1] - 1)
    # Rounding can land past the last token with mass: the most likely token then stands in.
    index = torch.where(probs.gather(1, index) > 0, index, 0 if order is not None else z.argmax(-1, keepdim=True))
    picked = index if order is None else order.gather(1, index)
    return picked.squeeze(1)


def uniform(seed: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """A uniform number in [0, 1) for each (seed, step): 53 bits from two 32-bit hashes, as float64."""
    counter = (step & _MASK32) * 2
    high = _mix(seed ^ _mix(counter & _MASK32))
    low = _mix((seed ^ 0x9E3779B9) ^ _mix((counter + 1) & _MASK32))
    return ((high >> 6).double() * 2.0**27 + (low >> 5).double()) / 2.0**53


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors, written so no product overflows 63 bits."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x < 2**32, by 16-bit halves so every product stays below 2**49."""
    return ((x & 0xFFFF) * c + (((x >> 16) * c) & 0xFFFF) * 65536) & _MASK32
