"""The local transformers backend on tiny random-weight models of the four real architectures."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from inference import TINY_MODELS, Inference, Registry, SamplingOptions
from inference.local.backend import TransformersBackend
from inference.registry import Architecture

IDS = [s.id for s in TINY_MODELS]


@pytest.fixture(scope="module")
def backend(models_dir: Path) -> TransformersBackend:
    return TransformersBackend(models_dir=models_dir, max_loaded=4)


def collect(
    backend: TransformersBackend, model_id: str, options: SamplingOptions, stop_after: int | None = None
) -> list[str]:
    spec = Registry.of(TINY_MODELS).get(model_id)
    stop = threading.Event()
    chunks: list[str] = []

    def emit(text: str) -> None:
        chunks.append(text)
        if stop_after is not None and len(chunks) >= stop_after:
            stop.set()

    backend.generate(spec, [{"role": "user", "content": "富士山について教えて"}], options, emit, stop)
    return chunks


@pytest.mark.parametrize("model_id", IDS)
def test_each_architecture_generates(backend: TransformersBackend, model_id: str) -> None:
    chunks = collect(backend, model_id, SamplingOptions(temperature=0.8, max_new_tokens=24))
    assert chunks and all(chunks)
    assert not any("\ufffd" in c for c in chunks)
    loaded = backend.load(Registry.of(TINY_MODELS).get(model_id))
    assert loaded.model.config.model_type == Architecture(Registry.of(TINY_MODELS).get(model_id).source).value
    assert loaded.model.config._attn_implementation == "sdpa"


def test_moe_model_routes_through_experts(backend: TransformersBackend) -> None:
    loaded = backend.load(Registry.of(TINY_MODELS).get("tiny-mixtral"))
    assert loaded.model.config.num_local_experts == 8 and loaded.model.config.num_experts_per_tok == 2


def test_greedy_is_deterministic(backend: TransformersBackend) -> None:
    options = SamplingOptions(temperature=0, max_new_tokens=20)
    assert "".join(collect(backend, "tiny-llama", options)) == "".join(collect(backend, "tiny-llama", options))


def test_stop_ends_generation_at_the_next_step(backend: TransformersBackend) -> None:
    # Greedy from a random model rarely ends by itself; 400 tokens would take a while.
    chunks = collect(backend, "tiny-gpt2", SamplingOptions(temperature=0, max_new_tokens=400), stop_after=3)
    assert len(chunks) <= 4  # the step in flight may still finish, nothing after it


def test_models_load_lazily(models_dir: Path) -> None:
    fresh = TransformersBackend(models_dir=models_dir)
    Inference(Registry.of(TINY_MODELS), fresh)
    assert not any(fresh.is_loaded(s.id) for s in TINY_MODELS)


def test_closing_the_stream_stops_generation(models_dir: Path) -> None:
    from tests.conftest import CountingBackend

    counting = CountingBackend(TransformersBackend(models_dir=models_dir))
    inference = Inference(Registry.of(TINY_MODELS), counting)

    async def first_then_close() -> None:
        options = SamplingOptions(temperature=0, max_new_tokens=2000)
        stream = inference.stream("tiny-gptneox", [], "こんにちは", options)
        async for item in stream:
            if isinstance(item, str):  # past the load: generation is under way
                break
        await stream.aclose()
        for _ in range(100):
            if not counting.active:
                break
            await asyncio.sleep(0.02)

    asyncio.run(first_then_close())
    assert counting.active == 0
    assert counting.chunks < 500  # about 2,000 uncancelled


def test_all_generation_runs_on_one_thread(models_dir: Path) -> None:
    """PyTorch is fastest on a thread it keeps using; every request to a model runs on that model's thread."""
    seen: set[int] = set()
    backend = TransformersBackend(models_dir=models_dir)
    model = backend.load(Registry.of(TINY_MODELS).get("tiny-llama")).model
    model.register_forward_hook(lambda *_: seen.add(threading.get_ident()))
    inference = Inference(Registry.of(TINY_MODELS), backend)

    async def three() -> None:
        for _ in range(3):
            async for _ in inference.stream("tiny-llama", [], "こんにちは", SamplingOptions(max_new_tokens=4)):
                pass

    asyncio.run(three())
    assert len(seen) == 1 and threading.get_ident() not in seen


def test_models_loaded_on_several_threads_at_once_are_whole(models_dir: Path) -> None:
    """Four visitors asking for four models at the same instant get four complete models.

    transformers builds a model's layers on the meta device and fills them from the checkpoint; a model
    built beside another on a second thread came out with its tied output layer still there, never
    loaded (seen as a compare round's GPT-2 replying nothing: every next token NaN).
    """
    fresh = TransformersBackend(models_dir=models_dir, max_loaded=4)
    registry = Registry.of(TINY_MODELS)
    for spec in registry.specs.values():  # the checkpoints exist first: what is raced is loading them
        fresh.need(spec)
    start = threading.Barrier(len(IDS))
    loaded: dict[str, object] = {}

    def load(model_id: str) -> None:
        start.wait()
        loaded[model_id] = fresh.acquire(registry.get(model_id))

    threads = [threading.Thread(target=load, args=(model_id,)) for model_id in IDS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(loaded) == sorted(IDS)
    for model_id, held in loaded.items():
        model = held.model  # type: ignore[attr-defined]
        left = [name for name, p in model.named_parameters() if p.device.type == "meta"]
        assert not left, f"{model_id}: {left}"
        fresh.release(registry.get(model_id))
