"""The ZeroGPU path: ``spaces.GPU`` with a duration from max_new_tokens, a no-op elsewhere.

ZeroGPU itself (its device API, the forked GPU worker) exists only on
Hugging Face; here the path is run in-process with ``spaces.GPU`` inert, and
what ZeroGPU would pickle between processes is pickled.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
from pathlib import Path

import pytest

from inference import SamplingOptions
from inference.errors import Busy, GenerationFailed, InvalidInput, OutOfMemory, UnknownModel
from inference.local import memory
from inference.local.backend import TransformersBackend, generate_on_gpu, zero_gpu_seconds
from inference.prompts import conversation
from inference.registry import TINY_MODELS

LLAMA = next(s for s in TINY_MODELS if s.id == "tiny-llama")


def test_the_decorator_is_a_no_op_off_zero_gpu() -> None:
    assert not memory.on_zero_gpu()
    assert not hasattr(generate_on_gpu, "zerogpu")  # spaces marks the functions it wraps


@pytest.mark.parametrize(("max_new_tokens", "seconds"), [(1, 16), (100, 20), (512, 41), (2048, 118)])
def test_gpu_time_asked_grows_with_max_new_tokens(max_new_tokens: int, seconds: int) -> None:
    options = SamplingOptions(max_new_tokens=max_new_tokens)
    assert zero_gpu_seconds(LLAMA, [], options) == seconds


def test_what_zero_gpu_sends_between_processes_survives_pickling() -> None:
    messages = conversation(LLAMA.prompt_format, [], "富士山について教えて")
    options = SamplingOptions(temperature=0.3, top_k=5)
    assert pickle.loads(pickle.dumps((LLAMA, messages, options))) == (LLAMA, messages, options)
    for error in (Busy(3), OutOfMemory(), UnknownModel("x", ["a"]), InvalidInput("日本語", "English")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and (back.ja, back.en, str(back)) == (error.ja, error.en, str(error))


@pytest.fixture
def zero_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the ZeroGPU branch; ``spaces.GPU`` stays inert, so the GPU function runs in this process."""
    monkeypatch.setattr(memory, "on_zero_gpu", lambda: True)
    monkeypatch.setattr(memory, "free_bytes", lambda: 64 * memory.GB)


def reply(backend: TransformersBackend, options: SamplingOptions, message: str = "富士山", stop_after: int = 0):
    chunks: list[str] = []
    stop = threading.Event()

    def emit(text: str) -> None:
        chunks.append(text)
        if stop_after and len(chunks) >= stop_after:
            stop.set()

    backend.generate(LLAMA, conversation(LLAMA.prompt_format, [], message), options, emit, stop)
    return chunks


def test_zero_gpu_path_gives_the_same_reply(models_dir: Path, zero_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    options = SamplingOptions(temperature=0, max_new_tokens=24)
    on_gpu = "".join(reply(TransformersBackend(models_dir=models_dir), options))
    monkeypatch.setattr(memory, "on_zero_gpu", lambda: False)
    assert on_gpu == "".join(reply(TransformersBackend(models_dir=models_dir), options))


def test_zero_gpu_path_stops_and_keeps_errors_bilingual(models_dir: Path, zero_gpu: None) -> None:
    backend = TransformersBackend(models_dir=models_dir)
    chunks = reply(backend, SamplingOptions(temperature=0, max_new_tokens=2000), stop_after=3)
    assert len(chunks) == 3
    assert not [t for t in threading.enumerate() if t.name == "zero-gpu-generate"]  # the worker ended
    with pytest.raises(InvalidInput, match=r"会話が長すぎます.*too long"):
        reply(backend, SamplingOptions(max_new_tokens=4), message="富" * 5000)


@pytest.mark.parametrize("where", ["step", "loop"])
def test_zero_gpu_path_keeps_the_same_failure_boundaries(models_dir: Path, zero_gpu: None, where: str) -> None:
    """A failure in the GPU worker reaches the visitor as the bilingual message; the next reply is served."""
    backend = TransformersBackend(models_dir=models_dir)
    loaded = backend.load(LLAMA)
    real = loaded.model
    failing = threading.Event()
    failing.set()

    class Failing:
        forward = real.forward

        def __getattr__(self, name: str):
            return getattr(real, name)

        def __call__(self, **kwargs):
            if failing.is_set() and kwargs["input_ids"].shape[1] == 1:
                # "step": an error a row boundary takes; "loop": a CUDA error, which ends the whole call.
                raise RuntimeError("injected" if where == "step" else "CUDA error: device-side assert triggered")
            return real(**kwargs)

    backend._slots[LLAMA.id].loaded = dataclasses.replace(loaded, model=Failing())
    with pytest.raises(GenerationFailed) as failed:
        reply(backend, SamplingOptions(temperature=0, max_new_tokens=8))
    assert failed.value.ja == "生成に失敗しました。もう一度お試しください。"
    assert failed.value.en == "Generation failed. Please try again."
    failing.clear()
    assert reply(backend, SamplingOptions(temperature=0, max_new_tokens=8))
