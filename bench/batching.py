"""Which way of batching to use on this machine: the same 8 prompts, greedy, four ways.

- one at a time with ``generate()`` (the baseline);
- one static batch through ``generate()`` (left-padded);
- transformers' continuous batching (``generate_batch``, the ContinuousBatchingManager);
- this project's ``Batcher`` (continuous batching on plain ``forward`` calls).

Run alone with ``python -m bench.batching``; ``python -m bench`` includes its rows.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, GenerationConfig

from bench import models
from bench.stats import Row
from inference import SamplingOptions
from inference.local import batcher as batching
from inference.local import kvcache
from inference.local.batcher import Batcher, Request

PROMPTS = [
    "富士山について教えて",
    "日本で一番高い山は何ですか",
    "東京の大学について",
    "自然言語処理とは何ですか",
    "こんにちは",
    "情報研究所の研究",
    "日本語の言語処理",
    "一番高い山を教えて",
]


def _ids(tokenizer, n: int) -> list[list[int]]:
    return [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS[:n]]


def measure(path: Path, tokens: int = 48, n: int = 8) -> dict[str, float]:
    """Aggregate tok/s of each way, on the model at ``path``."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    prompts = _ids(tokenizer, n)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    greedy = {"do_sample": False, "max_new_tokens": tokens, "min_new_tokens": tokens, "eos_token_id": eos,
              "pad_token_id": pad}  # fmt: skip
    result: dict[str, float] = {}
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]]), **(greedy | {"max_new_tokens": 4, "min_new_tokens": 4}))
        started = time.perf_counter()
        for ids in prompts:
            model.generate(torch.tensor([ids]), **greedy)
        result["one at a time, generate()"] = n * tokens / (time.perf_counter() - started)

        tokenizer.padding_side = "left"
        batch = tokenizer(PROMPTS[:n], add_special_tokens=False, return_tensors="pt", padding=True)
        started = time.perf_counter()
        model.generate(**batch, **greedy)
        result["one static batch, generate()"] = n * tokens / (time.perf_counter() - started)

    # The manager runs its own thread and manages inference mode itself.
    config = GenerationConfig(**greedy)
    started = time.perf_counter()
    out = model.generate_batch(prompts, generation_config=config)
    made = sum(len(o.generated_tokens) for o in out.values())
    result["transformers continuous batching"] = made / (time.perf_counter() - started)

    batcher = Batcher(model, tokenizer, max_batch=n)
    options = SamplingOptions(temperature=0, repetition_penalty=1.0, max_new_tokens=tokens)
    # eos cannot end these early: random weights, and the batcher is told a token that never comes.
    batcher.eos = -1
    requests = [Request(ids, options, tokens, lambda _: None, threading.Event()) for ids in prompts]
    started = time.perf_counter()
    for r in requests:
        batcher.submit(r)
    for r in requests:
        r.done.wait()
    result["this project's Batcher"] = sum(r.completion_tokens for r in requests) / (time.perf_counter() - started)
    batcher.close()
    return result


def step_ms(path: Path, context: int = 1800, rows: int = 8, steps: int = 30) -> dict[str, float]:
    """A decode step of ``rows`` rows at ``context`` positions: the Batcher's in-place cache against
    transformers' ``DynamicCache``, which copies the whole cache every step (ms per step, median of 3)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    ids = tokenizer("".join(PROMPTS) * 20, add_special_tokens=False).input_ids[:context]
    options = SamplingOptions(temperature=0, repetition_penalty=1.0, max_new_tokens=4 * steps)
    result: dict[str, float] = {}
    for name, cache in (("in place", kvcache.growing_cache), ("DynamicCache", lambda c: DynamicCache(config=c))):
        batching.growing_cache = cache  # the one name the Batcher builds its cache with
        try:
            batcher = Batcher(model, tokenizer, start=False)
            batcher.eos = -1  # random weights: nothing may end a row early
            times = []
            with torch.inference_mode():
                for _ in range(3):
                    requests = [
                        Request(ids, options, 4 * steps, lambda _: None, threading.Event()) for _ in range(rows)
                    ]
                    cohort = batcher._admit(requests)
                    started = time.perf_counter()
                    for _ in range(steps):
                        batcher._step(cohort)
                    times.append((time.perf_counter() - started) / steps * 1000)
            result[name] = sorted(times)[1]
        finally:
            batching.growing_cache = kvcache.growing_cache
    return result


def rows(path: Path) -> list[Row]:
    step = step_ms(path)
    r = measure(path)
    base = r["one at a time, generate()"]
    return [
        Row("6b. decode step, 8 rows at 1,800 positions of context, ~110M Llama in-process: the Batcher's "
            "in-place KV cache (ms per step)", f"{step['in place']:.1f}", f"DynamicCache: {step['DynamicCache']:.1f}",
            f"{step['DynamicCache'] / step['in place']:.2f}× faster", "(reported)", True),
    ] + [
        Row(f"6. batching choice, 8 requests × 48 tokens, ~110M Llama in-process: {name}", f"{tok_s:.1f} tok/s",
            f"one at a time: {base:.1f} tok/s", f"{tok_s / base:.2f}×", "(reported: picks the way)", True)
        for name, tok_s in r.items()
        if name != "one at a time, generate()"
    ]  # fmt: skip


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for row in rows(models.llama_110m(Path(tmp) / "llama-110m")):
            print(f"{row.metric}: {row.project} against {row.baseline} ({row.result})")
    sys.exit(0)
