"""Batched replies: the same tokens as alone, each to its own requester; per-request options, stop and seeds."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from inference import TINY_MODELS, Inference, Registry, SamplingOptions
from inference.local.backend import TransformersBackend
from inference.local.batcher import GENERATION_NICENESS, Batcher, Request, _groups
from inference.progress import Finished, Queued, Trimmed
from inference.prompts import Prompt, conversation, prepare

REGISTRY = Registry.of(TINY_MODELS)
MESSAGES = [
    "富士山について教えて",
    "こんにちは",
    "東京大学の情報研究所で言語処理の研究をしています。自然言語処理とは何ですか",
    "日本語",
    "a",
]


@pytest.fixture(scope="module")
def backend(models_dir: Path) -> TransformersBackend:
    return TransformersBackend(models_dir=models_dir, max_loaded=4)


def prompts(backend: TransformersBackend, model_id: str, max_new: int) -> tuple[object, list[Prompt]]:
    spec = REGISTRY.get(model_id)
    loaded = backend.load(spec)
    fmt = spec.prompt_format
    return loaded, [prepare(loaded.tokenizer, fmt, conversation(fmt, [], m), spec.context, max_new) for m in MESSAGES]


class Reply:
    """One requester: its own text, its own stop button."""

    def __init__(self, prompt: Prompt, options: SamplingOptions, stop_after: int = 0) -> None:
        self.chunks: list[str] = []
        self.stop_after = stop_after
        room = min(prompt.max_new_tokens, options.max_new_tokens)
        self.request = Request(prompt.ids, options, room, self.emit, threading.Event())

    def emit(self, text: str) -> None:
        self.chunks.append(text)
        if self.stop_after and len(self.chunks) >= self.stop_after:
            self.request.stop.set()

    @property
    def text(self) -> str:
        assert self.request.done.wait(60), "the reply never ended"
        assert self.request.error is None, self.request.error
        return "".join(self.chunks)


def alone(loaded, prompt: Prompt, options: SamplingOptions) -> str:
    reply = Reply(prompt, options)
    Batcher(loaded.model, loaded.tokenizer, start=False).run_alone(reply.request)
    return reply.text


@pytest.mark.parametrize("arrival", ["one by one", "together"])
@pytest.mark.parametrize("model_id", [s.id for s in TINY_MODELS])
def test_greedy_replies_are_the_same_batched_and_alone(
    backend: TransformersBackend, model_id: str, arrival: str
) -> None:
    """fp32, prompts of different lengths: joining a running batch at different steps, or arriving
    together and prefilled together (left padding in both)."""
    loaded, ps = prompts(backend, model_id, 40)
    options = SamplingOptions(temperature=0, repetition_penalty=1.05, max_new_tokens=40)
    expected = [alone(loaded, p, options) for p in ps]
    batcher = Batcher(loaded.model, loaded.tokenizer, max_batch=8, start=arrival == "one by one")
    replies = []
    for p in ps:
        replies.append(Reply(p, options))
        batcher.submit(replies[-1].request)
        if arrival == "one by one":
            time.sleep(0.005)  # later ones join a batch already decoding
    if arrival == "together":
        assert len(_groups([r.request for r in replies])) < len(replies)  # some really share a prefill
        batcher.thread.start()
    assert [r.text for r in replies] == expected
    assert all(r.request.completion_tokens == 40 and r.request.finish_reason == "length" for r in replies)
    batcher.close()


def test_each_request_keeps_its_own_sampling_options(backend: TransformersBackend) -> None:
    """Greedy rows stay greedy beside sampled rows; max_new_tokens is per row."""
    loaded, ps = prompts(backend, "tiny-llama", 30)
    greedy = SamplingOptions(temperature=0, max_new_tokens=30)
    expected = alone(loaded, ps[0], greedy)
    batcher = Batcher(loaded.model, loaded.tokenizer)
    hot = [Reply(p, SamplingOptions(temperature=1.5, top_k=5, top_p=0.9, max_new_tokens=30)) for p in ps[1:]]
    short = Reply(ps[0], SamplingOptions(temperature=0, max_new_tokens=5))
    cold = Reply(ps[0], greedy)
    for r in [*hot, short, cold]:
        batcher.submit(r.request)
    assert cold.text == expected
    assert short.request.completion_tokens == 5 and expected.startswith(short.text)
    batcher.close()


def test_stopping_one_request_leaves_the_others_streaming(backend: TransformersBackend) -> None:
    loaded, ps = prompts(backend, "tiny-gpt2", 60)
    options = SamplingOptions(temperature=0, max_new_tokens=60)
    expected = [alone(loaded, p, options) for p in ps[:3]]
    batcher = Batcher(loaded.model, loaded.tokenizer)
    replies = [Reply(ps[0], options), Reply(ps[1], options, stop_after=3), Reply(ps[2], options)]
    for r in replies:
        batcher.submit(r.request)
    stopped = replies[1]
    assert stopped.request.done.wait(30) and stopped.request.finish_reason == "cancelled"
    assert len(stopped.chunks) <= 4  # the step in flight may finish, nothing after it
    assert [replies[0].text, replies[2].text] == [expected[0], expected[2]]
    assert [r.request.completion_tokens for r in (replies[0], replies[2])] == [60, 60]
    batcher.close()


class Watched:
    """The model, with ``before`` called ahead of each forward: the moment between the batcher's steps."""

    def __init__(self, model, before) -> None:
        self.model, self.before = model, before

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, **kwargs):
        self.before()
        return self.model(**kwargs)


def test_a_request_arriving_during_a_prefill_is_prefilled_before_the_next_step(
    backend: TransformersBackend,
) -> None:
    """A newcomer's first token waits for prefills only, never behind the running rows' token steps."""
    loaded, ps = prompts(backend, "tiny-llama", 20)
    greedy = SamplingOptions(temperature=0, max_new_tokens=20)
    running, newcomer = Reply(ps[0], greedy), Reply(ps[2], greedy.model_copy(update={"max_new_tokens": 1}))
    seen: list[tuple[int, bool]] = []  # before each forward: the running reply's tokens, newcomer done

    def before() -> None:
        if not seen:
            batcher.submit(newcomer.request)  # arrives while the running reply is being prefilled
        seen.append((running.request.completion_tokens, newcomer.request.done.is_set()))

    batcher = Batcher(Watched(loaded.model, before), loaded.tokenizer)
    batcher.submit(running.request)
    assert running.text == alone(loaded, ps[0], greedy)
    assert newcomer.request.completion_tokens == 1 and newcomer.request.finish_reason == "length"
    # Forward 1 prefills the running reply, forward 2 the newcomer; only then does a step run.
    assert seen[:3] == [(0, False), (1, False), (1, True)]
    batcher.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are lowered on Linux only")
def test_generation_on_a_cpu_runs_below_the_web_layer(backend: TransformersBackend) -> None:
    """The model's threads take every core; the web layer must still cut in to answer new visitors."""
    loaded, ps = prompts(backend, "tiny-llama", 4)
    batcher = Batcher(loaded.model, loaded.tokenizer)
    reply = Reply(ps[0], SamplingOptions(temperature=0, max_new_tokens=4))
    batcher.submit(reply.request)
    assert reply.request.done.wait(60) and reply.request.error is None  # the thread has run
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert os.getpriority(os.PRIO_PROCESS, batcher.thread.native_id) == min(mine + GENERATION_NICENESS, 19) > mine
    batcher.close()


def test_a_seeded_request_is_reproducible_among_others(backend: TransformersBackend) -> None:
    """A seed cannot be honoured inside a shared batch, so it runs as its own batch of one."""
    loaded, ps = prompts(backend, "tiny-llama", 30)
    seeded = SamplingOptions(temperature=1.0, seed=7, max_new_tokens=30)
    expected = alone(loaded, ps[0], seeded)
    batcher = Batcher(loaded.model, loaded.tokenizer)
    others = [Reply(p, SamplingOptions(temperature=1.0, max_new_tokens=30)) for p in ps[1:]]
    mine = Reply(ps[0], seeded)
    for r in [*others[:2], mine, *others[2:]]:
        batcher.submit(r.request)
    assert mine.text == expected
    assert alone(loaded, ps[0], seeded.model_copy(update={"seed": 8})) != expected
    batcher.close()


# -- through the engine ---------------------------------------------------------


def run(inference: Inference, message: str, options: SamplingOptions, **kwargs) -> list:
    async def collect() -> list:
        return [item async for item in inference.stream("tiny-llama", kwargs.pop("history", []), message, options,
                                                         **kwargs)]  # fmt: skip

    return asyncio.run(collect())


def test_the_stream_ends_with_what_was_generated(backend: TransformersBackend) -> None:
    inference = Inference(REGISTRY, backend)
    items = run(inference, "富士山", SamplingOptions(temperature=0, max_new_tokens=12))
    finished = items[-1]
    assert isinstance(finished, Finished) and not any(isinstance(i, Finished) for i in items[:-1])
    assert (finished.model_id, finished.completion_tokens, finished.finish_reason) == ("tiny-llama", 12, "length")
    assert finished.prompt_tokens > 5 and finished.dropped_turns == 0 and finished.seconds > 0
    assert "12" in finished.describe() and "tok" in finished.describe()


def test_the_oldest_turns_are_dropped_when_the_context_is_outgrown(backend: TransformersBackend) -> None:
    inference = Inference(REGISTRY, backend)
    turn = "富士山は日本で一番高い山です。" * 20  # about 300 tokens a turn; the context holds 4096
    history = [{"role": r, "content": f"{i}: {turn}"} for i in range(30) for r in ("user", "assistant")]
    items = run(inference, "最後の質問", SamplingOptions(temperature=0, max_new_tokens=100), history=history)
    trimmed = [i for i in items if isinstance(i, Trimmed)]
    finished = items[-1]
    assert trimmed and trimmed[0].dropped_turns == finished.dropped_turns > 0
    assert finished.dropped_turns % 2 == 0  # whole exchanges, oldest first
    assert 4096 - 100 - 300 < finished.prompt_tokens <= 4096 - 100  # as much history as fits, no more
    assert finished.completion_tokens == 100


def test_a_caller_stop_event_leaves_the_queue_and_ends_generation(models_dir: Path) -> None:
    inference = Inference(REGISTRY, TransformersBackend(models_dir=models_dir), max_batch=1)
    long = SamplingOptions(temperature=0, max_new_tokens=2000)

    async def scenario() -> tuple[list, list]:
        first_stop, second_stop = threading.Event(), threading.Event()
        first: list = []
        second: list = []
        generating = asyncio.Event()

        async def one() -> None:
            async for item in inference.stream("tiny-llama", [], "一", long, stop=first_stop):
                first.append(item)
                if isinstance(item, str):  # holds the model's one place now
                    generating.set()

        async def two() -> None:
            await generating.wait()
            async for item in inference.stream("tiny-llama", [], "二", long, stop=second_stop):
                second.append(item)
                if isinstance(item, Queued):
                    second_stop.set()  # gives up while waiting behind the first

        replying = asyncio.create_task(one())
        await asyncio.wait_for(two(), 30)
        assert not replying.done()
        first_stop.set()
        await asyncio.wait_for(replying, 30)
        return first, second

    first, second = asyncio.run(scenario())
    assert isinstance(second[-1], Finished) and second[-1].finish_reason == "cancelled"
    assert any(isinstance(i, Queued) for i in second) and not any(isinstance(i, str) for i in second)
    assert isinstance(first[-1], Finished) and first[-1].finish_reason == "cancelled"
    assert first[-1].completion_tokens < 1000
