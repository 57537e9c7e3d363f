"""Memory estimates before loading, against the numbers the model cards publish."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, MixtralConfig

from inference import TINY_MODELS, ModelUnavailable, OutOfMemory, Registry, SamplingOptions
from inference.local import memory
from inference.local.backend import TransformersBackend

VOCAB = 99_487  # the llm-jp-3 vocabulary in the released models
LLMJP_18B = LlamaConfig(
    vocab_size=VOCAB, hidden_size=2048, intermediate_size=7168, num_hidden_layers=24, num_attention_heads=16,
    num_key_value_heads=16, max_position_embeddings=4096, tie_word_embeddings=False,
)  # fmt: skip
LLMJP_13B = LlamaConfig(
    vocab_size=VOCAB, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, max_position_embeddings=4096, tie_word_embeddings=False,
)  # fmt: skip
LLMJP_8X13B = MixtralConfig(
    vocab_size=VOCAB, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=4096,
    tie_word_embeddings=False,
)  # fmt: skip


@pytest.mark.parametrize(
    ("config", "embedding", "non_embedding"),
    [
        (LLMJP_18B, 407_498_752, 1_459_718_144),  # llm-jp-3.1-1.8b card
        (LLMJP_8X13B, 1_018_746_880, 72_144_081_920),  # llm-jp-3.1-8x13b card
    ],
)
def test_parameter_count_matches_the_cards(config, embedding: int, non_embedding: int) -> None:
    assert memory.parameter_count(config) == embedding + non_embedding


@pytest.mark.parametrize(
    ("config", "weights_gb", "kv_gb"),
    [(LLMJP_18B, 3.73, 0.81), (LLMJP_13B, 27.4, 3.36), (LLMJP_8X13B, 146.3, 3.36)],
)
def test_bf16_need_matches_the_weights_in_models_md(config, weights_gb: float, kv_gb: float) -> None:
    need = memory.need(config, torch.bfloat16, context=4096)
    assert need.weights / memory.GB == pytest.approx(weights_gb, abs=0.05)
    assert need.kv_cache / memory.GB == pytest.approx(kv_gb, abs=0.01)


def test_a_model_that_does_not_fit_is_refused_with_the_numbers() -> None:
    need = memory.need(LLMJP_8X13B, torch.bfloat16, context=4096)
    free = 80 * 1024**3  # one H100: the GPU is mocked, it cannot exist here
    assert need.total > free
    message = str(memory.refuse("LLM-jp-3.1 8x13B", need, free))
    assert "164.6 GB (weights 146.3 GB, KV cache 3.4 GB" in message and "85.9 GB free" in message
    assert "smaller model" in message and "vLLM" in message and "より小さいモデル" in message


def spec(model_id: str):
    return Registry.of(TINY_MODELS).get(model_id)


def test_backend_refuses_before_loading(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TransformersBackend(models_dir=models_dir)
    monkeypatch.setattr(memory, "free_bytes", lambda: 1024)  # nothing free
    with pytest.raises(ModelUnavailable, match="does not fit"):
        backend.generate(spec("tiny-llama"), [{"role": "user", "content": "x"}], SamplingOptions(), print,
                         threading.Event())  # fmt: skip
    assert not backend.is_loaded("tiny-llama")


def test_switching_models_evicts_what_does_not_fit(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Room for one tiny model at a time: loading the MoE model unloads the dense one first."""
    backend = TransformersBackend(models_dir=models_dir, max_loaded=4)
    backend.load(spec("tiny-llama"))
    moe = backend.need(spec("tiny-mixtral")).total
    # The GPU is mocked: while the dense model is loaded, half of what the MoE model needs is free.
    monkeypatch.setattr(memory, "free_bytes", lambda: (0.5 if backend.is_loaded("tiny-llama") else 1.5) * moe)
    backend.load(spec("tiny-mixtral"))
    assert backend.is_loaded("tiny-mixtral") and not backend.is_loaded("tiny-llama")


def test_unloading_really_frees_the_model(models_dir: Path) -> None:
    import weakref

    backend = TransformersBackend(models_dir=models_dir, max_loaded=1)
    dense = weakref.ref(backend.load(spec("tiny-llama")).model)
    backend.load(spec("tiny-mixtral"))
    assert dense() is None  # nothing keeps the evicted model alive: its memory is released


def test_out_of_memory_while_generating_is_told_apart_and_the_backend_recovers(models_dir: Path) -> None:
    """The GPU's out-of-memory error is injected: no GPU exists here."""
    backend = TransformersBackend(models_dir=models_dir)
    model = backend.load(spec("tiny-llama")).model

    def exhausted(*_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hook = model.model.layers[0].register_forward_hook(exhausted)
    messages = [{"role": "user", "content": "こんにちは"}]
    try:
        with pytest.raises(OutOfMemory) as err:
            backend.generate(spec("tiny-llama"), messages, SamplingOptions(), print, threading.Event())
        assert "Out of memory" in err.value.en and "メモリが不足" in err.value.ja
    finally:
        hook.remove()
    chunks: list[str] = []
    backend.generate(spec("tiny-llama"), messages, SamplingOptions(max_new_tokens=8), chunks.append, threading.Event())
    assert chunks  # still serving


def test_the_kv_cache_is_planned_for_the_whole_batch() -> None:
    """Eight 13b replies at a 4,096 context hold about 27 GB of cache, not the 3.4 GB of one."""
    need = memory.need(LLMJP_13B, torch.bfloat16, context=4096, rows=8)
    assert need.kv_cache * 8 / memory.GB == pytest.approx(26.8, abs=0.1)
    assert need.planned == int((need.weights + 8 * need.kv_cache) * memory.HEADROOM) > need.total
    # The budget in cache positions: at least one whole reply, at most eight, as memory allows.
    assert need.kv_budget(free=0) == 4096
    assert need.kv_budget(free=10**15) == 8 * 4096
    assert need.kv_budget(free=int(2 * need.kv_cache * memory.HEADROOM) + 1) == 2 * 4096
    message = str(memory.refuse("LLM-jp-3.1 13B", need, 20 * memory.GB))
    assert "8 replies at once" in message and f"{need.planned / memory.GB:.1f} GB" in message


def test_models_lists_what_each_model_needs(models_dir) -> None:
    from inference import CHECKPOINTS, Registry
    from webapp.chat.models_info import catalogue

    listed = {m["id"]: m["memory"] for m in catalogue(Registry.of(CHECKPOINTS), batch=8)}
    m13 = listed["llm-jp-3.1-13b-instruct4"]
    need = memory.need(LLMJP_13B, torch.bfloat16, context=4096, rows=8)
    assert m13["kv_cache_bytes_per_reply"] == need.kv_cache and m13["batch"] == 8
    assert m13["kv_cache_bytes_for_batch"] == 8 * need.kv_cache
