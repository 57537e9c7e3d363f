"""The sampler: the meaning transformers' processors give each value, for every value and every logit."""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import pytest
import torch

from inference import TINY_MODELS, Registry, SamplingOptions
from inference.local.backend import TransformersBackend
from inference.local.batcher import Batcher, Request
from inference.local.sampler import FAILED, RowOptions, sample, uniform
from inference.prompts import conversation, prepare

INF = math.inf


def draw(logits: list[list[float]], options: list[SamplingOptions], seen: list[list[bool]] | None = None):
    x = torch.tensor(logits, dtype=torch.float32)
    s = torch.tensor(seen) if seen is not None else torch.zeros_like(x, dtype=torch.bool)
    return sample(x, s, RowOptions.of(options, "cpu")).tolist()


GREEDY = SamplingOptions(temperature=0, repetition_penalty=1.0)
HOT = SamplingOptions(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0, seed=1)


def test_each_row_gets_the_meaning_of_its_own_logits_in_one_batch() -> None:
    rows = [
        [1.0, 5.0, 2.0, 0.0],  # plain: greedy picks 1
        [1.0, INF, 2.0, INF],  # +inf means certainty: one of the +inf tokens
        [1.0, math.nan, 2.0, 0.0],  # NaN: no defined next token
        [-INF, -INF, -INF, -INF],  # nothing left to choose
        [3e38, 3.4e38, -3e38, 0.0],  # near the float32 limit: no overflow into NaN
        [65504.0, -65504.0, 0.0, 1.0],  # fp16's largest values, as an fp16 model gives them
    ]
    greedy = draw(rows, [GREEDY] * 6)
    assert greedy[0] == 1 and greedy[1] in (1, 3) and greedy[2:4] == [FAILED, FAILED]
    assert greedy[4] == 1 and greedy[5] == 0
    hot = draw(rows, [HOT] * 6)
    assert hot[1] in (1, 3) and hot[2:4] == [FAILED, FAILED] and hot[4] == 1 and hot[5] == 0


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-30, 1e-6])
def test_a_vanishing_temperature_is_greedy(temperature: float) -> None:
    options = [SamplingOptions(temperature=temperature, seed=s, repetition_penalty=1.0) for s in range(50)]
    tokens = draw([[0.5, 0.4999, 0.1, -2.0]] * 50, options)
    assert set(tokens) == {0}


@pytest.mark.parametrize(("top_p", "top_k"), [(5e-324, 0), (1e-9, 0), (1.0, 1), (0.3, 0)])
def test_the_tightest_filters_keep_the_most_likely_token(top_p: float, top_k: int) -> None:
    options = [SamplingOptions(temperature=2.0, top_p=top_p, top_k=top_k, seed=s) for s in range(50)]
    assert set(draw([[0.0, 3.0, 1.0, 2.0]] * 50, options)) == {1}


def test_top_k_keeps_ties_with_the_kth_as_transformers_does() -> None:
    options = [SamplingOptions(temperature=1.0, top_k=1, top_p=1.0, seed=s) for s in range(200)]
    assert set(draw([[2.0, 2.0, 1.0, -1.0]] * 200, options)) == {0, 1}


def test_the_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    # Token 0 leads by a little; once seen, a penalty of 2 halves it below token 1.
    seen = [[True, False, False], [False, False, True]]
    options = [SamplingOptions(temperature=0, repetition_penalty=2.0)] * 2
    assert draw([[3.0, 2.0, -5.0], [-1.0, -1.5, -0.9]], options, seen) == [1, 0]


def test_draws_follow_the_distribution() -> None:
    """An exact multinomial draw: the frequencies over 20,000 seeds match the softmax."""
    n = 20_000
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]]).expand(n, 4).contiguous()
    rows = RowOptions.of([SamplingOptions(temperature=1.0, top_p=1.0, top_k=0, seed=s) for s in range(n)], "cpu")
    tokens = sample(logits, torch.zeros_like(logits, dtype=torch.bool), rows)
    freq = torch.bincount(tokens, minlength=4).double() / n
    assert torch.allclose(freq, logits[0].softmax(-1).double(), atol=0.015)


def test_a_seed_gives_the_same_draws_and_other_seeds_other_draws() -> None:
    seeds, steps = torch.tensor([7, 7, 8]), torch.tensor([0, 0, 0])
    u = uniform(seeds, steps)
    assert u[0] == u[1] != u[2] and bool(((u >= 0) & (u < 1)).all())
    assert uniform(seeds, steps + 1)[0] != u[0]  # each step draws afresh


EDGES = {
    "temperature": [0.0, 5e-324, 1e-6, 2.0],
    "top_p": [5e-324, 0.5, 1.0],
    "top_k": [0, 1, 1000],
    "repetition_penalty": [1.0, 1.0000001, 2.0],
    "seed": [None, 0, 2**32 - 1],
}


def test_every_edge_of_every_range_gets_a_reply_alone_and_batched(models_dir: Path) -> None:
    """Each combination of range edges, in batches mixing seeded and unseeded rows, then a plain visitor."""
    registry = Registry.of(TINY_MODELS)
    spec = registry.get("tiny-llama")
    loaded = TransformersBackend(models_dir=models_dir).load(spec)
    fmt = spec.prompt_format
    ids = prepare(loaded.tokenizer, fmt, conversation(fmt, [], "富士山"), spec.context, 8).ids
    combos = [dict(zip(EDGES, values, strict=True)) for values in itertools.product(*EDGES.values())]
    batcher = Batcher(loaded.model, loaded.tokenizer, start=False)
    requests = [
        Request(ids, SamplingOptions(**c, max_new_tokens=3), 3, lambda _: None, threading.Event()) for c in combos
    ]
    for r in requests[:8]:
        batcher.run_alone(r)  # alone: each on its own
    for r in requests[8:]:
        batcher.submit(r)  # batched: up to eight at a time, seeded ones beside the others
    batcher.thread.start()
    for r, c in zip(requests, combos, strict=True):
        assert r.done.wait(60), c
        assert r.error is None and r.completion_tokens >= 1, (c, r.error)
    plain = Request(ids, SamplingOptions(max_new_tokens=3), 3, lambda _: None, threading.Event())
    batcher.submit(plain)
    assert plain.done.wait(60) and plain.error is None and plain.completion_tokens >= 1
    batcher.close()
