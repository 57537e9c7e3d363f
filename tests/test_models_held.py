"""Several models at once: none unloaded while in use, each streaming on its own, downloads outside the lanes."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference import TINY_MODELS, Inference, ModelUnavailable, Registry, SamplingOptions
from inference.local import memory
from inference.local.backend import TransformersBackend
from inference.local.tiny import ensure
from inference.progress import Downloading, Finished
from inference.registry import Architecture
from tests.fake_hub import FakeHub

REGISTRY = Registry.of(TINY_MODELS)


def spec(model_id: str):
    return REGISTRY.get(model_id)


def test_a_model_in_use_is_never_unloaded_for_another(models_dir: Path) -> None:
    backend = TransformersBackend(models_dir=models_dir, max_loaded=1)
    backend.acquire(spec("tiny-llama"))  # a request is running (or waiting) on it
    with pytest.raises(ModelUnavailable, match=r"使用中.*tiny-llama.*in use \(tiny-llama\)"):
        backend.load(spec("tiny-gpt2"))
    assert backend.loaded_ids() == ["tiny-llama"]
    backend.release(spec("tiny-llama"))  # idle now: it may make room
    backend.load(spec("tiny-gpt2"))
    assert backend.loaded_ids() == ["tiny-gpt2"]


def test_a_model_that_does_not_fit_beside_one_in_use_is_refused_with_figures(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GPU is mocked: while the dense model is loaded, half of what the MoE model needs is free."""
    backend = TransformersBackend(models_dir=models_dir, max_loaded=4)
    backend.acquire(spec("tiny-llama"))
    moe = backend.need(spec("tiny-mixtral")).total
    monkeypatch.setattr(memory, "free_bytes", lambda: (0.5 if backend.is_loaded("tiny-llama") else 1.5) * moe)
    with pytest.raises(ModelUnavailable, match=r"does not fit now: it needs .* GB .* GB free.*in use \(tiny-llama\)"):
        backend.load(spec("tiny-mixtral"))
    assert backend.is_loaded("tiny-llama") and not backend.is_loaded("tiny-mixtral")


async def timed(inference: Inference, model_id: str, max_new: int = 200) -> list[tuple[float, object]]:
    options = SamplingOptions(temperature=0, max_new_tokens=max_new)
    return [(time.monotonic(), item) async for item in inference.stream(model_id, [], "富士山", options)]


def test_two_loaded_models_stream_at_once_each_on_its_own_thread(models_dir: Path) -> None:
    backend = TransformersBackend(models_dir=models_dir, max_loaded=2)
    threads: dict[str, set[int]] = {"tiny-llama": set(), "tiny-gpt2": set()}
    for model_id, seen in threads.items():
        model = backend.load(spec(model_id)).model
        model.register_forward_hook(lambda *_, seen=seen: seen.add(threading.get_ident()))
    inference = Inference(REGISTRY, backend)

    async def both() -> list[list[tuple[float, object]]]:
        return await asyncio.gather(timed(inference, "tiny-llama", 400), timed(inference, "tiny-gpt2", 400))

    llama, gpt2 = asyncio.run(both())
    texts = [[t for t, item in items if isinstance(item, str)] for items in (llama, gpt2)]
    # Each one's text kept arriving while the other's did: neither waited for the other's whole reply.
    assert texts[0][0] < texts[1][-1] and texts[1][0] < texts[0][-1]
    assert all(isinstance(items[-1][1], Finished) for items in (llama, gpt2))
    assert len(threads["tiny-llama"]) == len(threads["tiny-gpt2"]) == 1
    assert threads["tiny-llama"] != threads["tiny-gpt2"]
    assert sorted(backend.loaded_ids()) == ["tiny-gpt2", "tiny-llama"]


@pytest.fixture
def slow_hub(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    hold = threading.Event()
    repos = {"llm-jp/tiny-llama-test": ensure(Architecture.LLAMA, models_dir)}
    with FakeHub(repos, hold=hold) as fake:
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE")
        try:
            yield fake
        finally:
            hold.set()


def test_a_download_neither_blocks_loaded_models_nor_hides_its_progress(slow_hub: FakeHub, models_dir: Path) -> None:
    hub_spec = dataclasses.replace(spec("tiny-llama"), id="hub-llama", source="llm-jp/tiny-llama-test", tiny=False)
    registry = Registry.of([*TINY_MODELS, hub_spec])
    backend = TransformersBackend(models_dir=models_dir, max_loaded=4)
    backend.load(spec("tiny-gpt2"))
    inference = Inference(registry, backend)

    async def scenario() -> tuple[list, list, list, float]:
        waiting = [asyncio.create_task(timed(inference, "hub-llama", 8)) for _ in range(2)]
        await asyncio.sleep(1.0)  # both are waiting on the half-sent weights
        chat = await asyncio.wait_for(timed(inference, "tiny-gpt2", 50), 30)
        chat_done = time.monotonic()
        assert not any(w.done() for w in waiting), "the download was not held"
        slow_hub.hold.set()
        first, second = await asyncio.wait_for(asyncio.gather(*waiting), 60)
        return first, second, chat, chat_done

    first, second, chat, chat_done = asyncio.run(scenario())
    assert isinstance(chat[-1][1], Finished) and chat[-1][1].completion_tokens == 50
    for items in (first, second):
        # Both visitors waiting for the model heard its download while it was under way (and the chat went on).
        assert any(t < chat_done for t, item in items if isinstance(item, Downloading))
        texts = [t for t, item in items if isinstance(item, str)]
        assert texts and texts[0] > chat_done  # the model only arrived after the chat had finished
        assert (
            isinstance(items[-1][1], Finished) and items[-1][1].revision == "0123456789abcdef0123456789abcdef01234567"
        )


def test_a_gated_model_without_a_token_is_explained_before_the_hub_is_asked(models_dir: Path) -> None:
    from inference import CHECKPOINTS

    gated = next(s for s in CHECKPOINTS if s.gated)
    backend = TransformersBackend(models_dir=models_dir, offline=lambda: pytest.fail("the hub was asked"))
    with pytest.raises(ModelUnavailable, match=r"承認制.*HF_TOKEN.*gated"):
        backend.need(gated)
