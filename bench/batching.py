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
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from bench import models
from bench.stats import Row
from inference import SamplingOptions
from inference.batching import Batcher, Request

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


def rows(path: Path) -> list[Row]:
    r = measure(path)
    base = r["one at a time, generate()"]
    return [
        Row(f"6. batching choice, 8 requests × 48 tokens, ~110M Llama in-process: {name}", f"{tok_s:.1f} tok/s",
            f"one at a time: {base:.1f} tok/s", f"{tok_s / base:.2f}×", "(reported: picks the way)", True)
        for name, tok_s in r.items()
        if name != "one at a time, generate()"
    ]  # fmt: skip


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name, tok_s in measure(models.llama_110m(Path(tmp) / "llama-110m")).items():
            print(f"{name:40s} {tok_s:7.1f} tok/s")
    sys.exit(0)
