"""What a visitor sees before the first token: download bytes, load progress, hub errors in words.

The hub is replaced by a local HTTP stand-in (tests/fake_hub.py) serving a
tiny model's files; the real ``huggingface_hub`` client downloads from it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference import Inference, Registry, SamplingOptions
from inference.errors import ModelUnavailable
from inference.local.backend import TransformersBackend
from inference.local.tiny import ensure
from inference.progress import Downloading, Finished, Loading
from inference.prompts import conversation
from inference.registry import TINY_MODELS, Architecture
from tests.fake_hub import FakeHub

LLAMA = next(s for s in TINY_MODELS if s.id == "tiny-llama")


def generate(backend: TransformersBackend, spec, statuses: list) -> str:
    chunks: list[str] = []
    messages = conversation(spec.prompt_format, [], "富士山")
    options = SamplingOptions(temperature=0, max_new_tokens=8)
    backend.generate(spec, messages, options, chunks.append, threading.Event(), report=statuses.append)
    return "".join(chunks)


def test_loading_reports_progress_once(models_dir: Path) -> None:
    backend = TransformersBackend(models_dir=models_dir, offline=True)
    weights = backend.need(LLAMA).weights
    statuses: list = []
    assert generate(backend, LLAMA, statuses)
    assert statuses[0] == Loading(0, weights) and statuses[-1] == Loading(weights, weights)
    assert all(isinstance(s, Loading) and 0 <= s.done <= weights for s in statuses)
    again: list = []
    generate(backend, LLAMA, again)
    assert again == []  # already loaded: nothing to wait for


def test_the_stream_passes_statuses_before_the_first_text(models_dir: Path) -> None:
    inference = Inference(Registry.of(TINY_MODELS), TransformersBackend(models_dir=models_dir, offline=True))

    async def collect() -> list:
        return [item async for item in inference.stream("tiny-gpt2", [], "こんにちは", SamplingOptions())]

    items = asyncio.run(collect())
    first_text = next(i for i, item in enumerate(items) if isinstance(item, str))
    assert first_text > 0 and all(isinstance(item, Loading) for item in items[:first_text])
    assert all(isinstance(item, str) for item in items[first_text:-1])
    assert isinstance(items[-1], Finished) and items[-1].completion_tokens > 0  # always last


@pytest.fixture
def hub(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    from huggingface_hub import constants

    repos = {"llm-jp/tiny-llama-test": ensure(Architecture.LLAMA, models_dir)}
    with FakeHub(repos, gated=frozenset({"llm-jp/tiny-gated"})) as fake:
        # What HF_ENDPOINT does when set before huggingface_hub is imported.
        monkeypatch.setattr(constants, "ENDPOINT", fake.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE")
        yield fake


def test_download_reports_bytes_then_loads(hub: FakeHub, models_dir: Path, tmp_path: Path) -> None:
    spec = dataclasses.replace(LLAMA, source="llm-jp/tiny-llama-test", tiny=False)
    backend = TransformersBackend(models_dir=models_dir)
    statuses: list = []
    reply = generate(backend, spec, statuses)
    assert reply == generate(TransformersBackend(models_dir=models_dir, offline=True), LLAMA, [])

    downloads = [s for s in statuses if isinstance(s, Downloading)]
    repo = hub.repos["llm-jp/tiny-llama-test"]
    # config.json was fetched first, alone, to size the model before committing to a download.
    size = sum(p.stat().st_size for p in repo.iterdir()) - (repo / "config.json").stat().st_size
    assert downloads and downloads[-1] == Downloading(size, size)
    assert [d.done for d in downloads] == sorted(d.done for d in downloads)  # bytes only ever grow
    last_download = max(i for i, s in enumerate(statuses) if isinstance(s, Downloading))
    loads = statuses[last_download + 1 :]
    assert loads and all(isinstance(s, Loading) for s in loads)  # the load follows the download
    assert "ダウンロード" in downloads[0].describe() and "GB" in downloads[0].describe()
    assert any((tmp_path / "hub-cache").rglob("model.safetensors"))  # into the hub's cache, as from_pretrained would


@pytest.mark.parametrize(
    ("repo", "message"),
    [
        ("llm-jp/tiny-gated", r"承認制.*HF_TOKEN.*gated"),
        ("llm-jp/no-such-model", r"見つかりません.*not found"),
    ],
)
def test_hub_errors_are_explained(hub: FakeHub, models_dir: Path, repo: str, message: str) -> None:
    spec = dataclasses.replace(LLAMA, source=repo, tiny=False)
    with pytest.raises(ModelUnavailable, match=message):
        generate(TransformersBackend(models_dir=models_dir), spec, [])
