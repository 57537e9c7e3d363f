"""One visitor's request never stops the model for the others: each kind of failure ends only its own row.

A poisoned request carries a token (``POISON``) no other prompt has. The
model wrapper makes that row fail in the chosen place: its prefill raises,
its next token step raises, its logits turn to NaN, its text cannot be
decoded, or its consumer raises. The other rows must finish exactly as they
would alone, and the loop must go on serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from pathlib import Path

import pytest
import torch

from inference import TINY_MODELS, Inference, Registry, SamplingOptions
from inference.errors import AppError, GenerationFailed, OutOfMemory
from inference.local import batcher as batching_module
from inference.local.backend import TransformersBackend
from inference.local.batcher import FAIR_SHARE_TOKENS, Batcher, Request
from inference.progress import Finished, WaitingForMemory
from inference.prompts import conversation, prepare

REGISTRY = Registry.of(TINY_MODELS)
FAILED_JA = "生成に失敗しました。もう一度お試しください。"
FAILED_EN = "Generation failed. Please try again."
GREEDY = SamplingOptions(temperature=0, repetition_penalty=1.0, max_new_tokens=12)
MESSAGES = ["富士山について教えて", "こんにちは", "自然言語処理とは何ですか", "日本語", "a"]


@pytest.fixture(scope="module")
def loaded(models_dir: Path):
    backend = TransformersBackend(models_dir=models_dir, max_loaded=2)
    return backend.load(REGISTRY.get("tiny-llama"))


def prompt_ids(loaded, message: str) -> list[int]:
    spec = REGISTRY.get("tiny-llama")
    fmt = spec.prompt_format
    return prepare(loaded.tokenizer, fmt, conversation(fmt, [], message), spec.context, 64).ids


class Poisoned:
    """The model, failing for the row whose prompt holds ``poison`` in the way ``mode`` names."""

    def __init__(self, model, poison: int, mode: str) -> None:
        self.model, self.poison, self.mode = model, poison, mode
        self.forward = model.forward  # the batcher reads the real signature from here

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, *, input_ids, **kwargs):
        prefill = input_ids.shape[1] > 1
        marked = (input_ids == self.poison).any(1)
        if self.mode == "prefill" and prefill and marked.any():
            raise RuntimeError("injected prefill failure")
        if self.mode == "step" and not prefill and marked.any():
            raise RuntimeError("injected step failure")
        out = self.model(input_ids=input_ids, **kwargs)
        logits = out.logits[:, -1, :]
        logits[:, self.poison] = -float("inf")  # no healthy row ever draws the poison
        if prefill:
            # The poisoned row's first token is the poison itself: its later steps carry it.
            logits[marked, self.poison] = 1e4
        if self.mode == "nan":
            logits[marked] = float("nan")
        return out


class Decoding:
    """The tokenizer, failing to decode any text that holds ``poison``."""

    def __init__(self, tokenizer, poison: int) -> None:
        self.tokenizer, self.poison = tokenizer, poison

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)

    def decode(self, ids, **kwargs):
        if self.poison in ids:
            raise ValueError("injected decoding failure")
        return self.tokenizer.decode(ids, **kwargs)


class Reply:
    def __init__(self, ids: list[int], options: SamplingOptions = GREEDY, *, fails: bool = False) -> None:
        self.chunks: list[str] = []
        self.fails = fails
        self.request = Request(ids, options, options.max_new_tokens, self.emit, threading.Event())

    def emit(self, text: str) -> None:
        if self.fails:
            raise ConnectionError("injected consumer failure")
        self.chunks.append(text)

    def wait(self) -> Request:
        assert self.request.done.wait(60), "the reply never ended"
        return self.request

    @property
    def text(self) -> str:
        assert self.wait().error is None, self.request.error
        return "".join(self.chunks)


def poison_of(loaded) -> int:
    return loaded.tokenizer.vocab_size - 1


def alone(model, tokenizer, ids: list[int], options: SamplingOptions = GREEDY) -> str:
    reply = Reply(ids, options)
    Batcher(model, tokenizer, start=False).run_alone(reply.request)
    return reply.text


def assert_failed_in_words(request: Request) -> None:
    assert isinstance(request.error, GenerationFailed), request.error
    assert request.error.ja == FAILED_JA and request.error.en == FAILED_EN


@pytest.mark.parametrize("mode", ["prefill", "step", "nan", "decode", "consumer", "sampling"])
def test_a_failure_in_one_row_ends_that_row_only(loaded, mode: str, monkeypatch, caplog) -> None:
    poison = poison_of(loaded)
    model = Poisoned(loaded.model, poison, mode)
    tokenizer = Decoding(loaded.tokenizer, poison) if mode == "decode" else loaded.tokenizer
    healthy_ids = [prompt_ids(loaded, m) for m in MESSAGES[:4]]
    sick_options = GREEDY
    if mode == "sampling":
        # Sampling itself raising (it should not: this is the boundary behind that promise).
        real = batching_module.sample
        sick_options = GREEDY.model_copy(update={"temperature": 0.123})

        def sample(logits, seen, rows):
            if bool((rows.temperature == 0.123).any()):
                raise RuntimeError("injected sampling failure")
            return real(logits, seen, rows)

        monkeypatch.setattr(batching_module, "sample", sample)
    expected = [alone(model, tokenizer, ids) for ids in healthy_ids]
    healthy = [Reply(ids) for ids in healthy_ids]
    sick = Reply([*prompt_ids(loaded, MESSAGES[4]), poison], sick_options, fails=mode == "consumer")
    batcher = Batcher(model, tokenizer, start=False)
    for reply in [*healthy[:2], sick, *healthy[2:]]:  # together: prefilled as one group
        batcher.submit(reply.request)
    batcher.thread.start()
    assert [r.text for r in healthy] == expected
    assert_failed_in_words(sick.wait())
    # The loop goes on: a later request is served.
    later = Reply(healthy_ids[0])
    batcher.submit(later.request)
    assert later.text == expected[0]
    assert batcher.thread.is_alive()
    batcher.close()
    batcher.join(10)
    # Logged once, with its traceback, naming what failed.
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) <= 1 if mode != "nan" else not tracebacks


def test_an_out_of_memory_in_a_step_fails_the_newest_rows_and_keeps_the_others(loaded) -> None:
    class Tight:
        forward = loaded.model.forward

        def __getattr__(self, name: str):
            return getattr(loaded.model, name)

        def __call__(self, *, input_ids, **kwargs):
            if input_ids.shape[1] == 1 and input_ids.shape[0] > 2:
                raise torch.OutOfMemoryError("injected: CUDA out of memory")
            return loaded.model(input_ids=input_ids, **kwargs)

    model = Tight()
    ids = [prompt_ids(loaded, m) for m in MESSAGES[:4]]
    expected = [alone(model, loaded.tokenizer, i) for i in ids[:2]]
    batcher = Batcher(model, loaded.tokenizer)
    replies = []
    for i in ids[:3]:  # one after the other: the cohort holds them in arrival order
        replies.append(reply := Reply(i, GREEDY.model_copy(update={"max_new_tokens": 40})))
        batcher.submit(reply.request)
        deadline = time.monotonic() + 30
        while not reply.request.completion_tokens and not reply.request.done.is_set():
            assert time.monotonic() < deadline
            time.sleep(0.001)
    # The third made the step run out of memory: it alone ended, in words.
    assert isinstance(replies[2].wait().error, OutOfMemory)
    assert "メモリが不足しました" in replies[2].request.error.ja
    # A fourth, once the third has ended (sent earlier, it may join the same step and be the newest to end).
    replies.append(fourth := Reply(ids[3], GREEDY.model_copy(update={"max_new_tokens": 40})))
    batcher.submit(fourth.request)
    fourth.wait()
    for oldest, want in zip(replies[:2], expected, strict=True):
        assert oldest.text.startswith(want)  # the same tokens as alone (longer: 40 against 12)
        assert oldest.request.completion_tokens == 40
    # The budget shrank to what the two hold: the fourth waited for memory, then ran.
    assert replies[3].request.told_to_wait and replies[3].text
    batcher.close()


def test_a_reply_waits_for_memory_and_hears_why(loaded) -> None:
    first_ids, second_ids = prompt_ids(loaded, MESSAGES[0]), prompt_ids(loaded, MESSAGES[1])
    long = GREEDY.model_copy(update={"max_new_tokens": 60})
    budget = len(first_ids) + 60 + 5  # room for the first reply only
    batcher = Batcher(loaded.model, loaded.tokenizer, kv_budget=budget)
    first, second = Reply(first_ids, long), Reply(second_ids, long)
    heard: list[object] = []
    second.request.report = heard.append
    batcher.submit(first.request)
    batcher.submit(second.request)
    assert first.text and second.text
    assert heard and isinstance(heard[0], WaitingForMemory) and heard[0].position == 1
    assert "メモリの空きを待っています" in heard[0].describe()
    batcher.close()


def test_a_reply_asked_to_make_room_ends_at_its_fair_share(loaded) -> None:
    batcher = Batcher(loaded.model, loaded.tokenizer)
    batcher.eos = -1  # random weights: nothing may end the reply early
    reply = Reply(prompt_ids(loaded, MESSAGES[0]), GREEDY.model_copy(update={"max_new_tokens": 2048}))
    reply.request.make_room.set()
    batcher.submit(reply.request)
    assert reply.wait().error is None
    assert reply.request.finish_reason == "shared" and reply.request.completion_tokens == FAIR_SHARE_TOKENS
    batcher.close()


# -- the watchdog, through the engine ------------------------------------------------


def stream(inference: Inference, message: str, options: SamplingOptions, started: threading.Event | None = None):
    """Run one reply to its end; its items, or the AppError it ended with."""

    async def collect():
        items = []
        try:
            async for item in inference.stream("tiny-llama", [], message, options):
                items.append(item)
                if isinstance(item, str) and started is not None:
                    started.set()
        except AppError as exc:
            return items, exc
        return items, None

    return asyncio.run(collect())


def kill(thread: threading.Thread) -> None:
    """End a Python thread from outside, as a crash would."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(SystemExit))
    assert done == 1


@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_the_watchdog_ends_the_replies_of_a_dead_or_stuck_loop_and_starts_a_fresh_one(
    models_dir: Path, how: str
) -> None:
    backend = TransformersBackend(models_dir=models_dir, max_loaded=2, max_batch=2, stall_s=1.5)
    inference = Inference(REGISTRY, backend, max_batch=2, max_queue=4)
    spec = REGISTRY.get("tiny-llama")
    loaded = backend.load(spec)
    slot = backend._slots[spec.id]
    release = threading.Event()
    if how == "stalled":

        class Stuck:
            forward = loaded.model.forward

            def __getattr__(self, name: str):
                return getattr(loaded.model, name)

            def __call__(self, **kwargs):
                if kwargs["input_ids"].shape[1] == 1 and not release.is_set():
                    release.wait(30)  # a forward that never returns (until the test lets it)
                return loaded.model(**kwargs)

        slot.batcher.close()
        slot.batcher = Batcher(Stuck(), loaded.tokenizer, max_batch=2, name=spec.id, stall_s=backend.stall_s)
    old = slot.batcher
    long = SamplingOptions(temperature=0, max_new_tokens=2048)
    results: list[object] = []
    started = threading.Event()
    runners = [threading.Thread(target=lambda: results.append(stream(inference, "長い返答", long, started)))]
    runners.append(threading.Thread(target=lambda: results.append(stream(inference, "もう一つ", long))))
    for r in runners:
        r.start()
    if how == "killed":
        assert started.wait(30)
        kill(old.thread)
    began = time.monotonic()
    for r in runners:
        r.join(30)
    assert len(results) == 2, "a reply was left waiting"
    for _, error in results:
        assert isinstance(error, GenerationFailed) and error.ja == FAILED_JA
    assert time.monotonic() - began < 10
    # Slots given back: the lane's places, the model's holds; a fresh loop serves the next visitor.
    deadline = time.monotonic() + 5
    while slot.batcher is old and time.monotonic() < deadline:
        time.sleep(0.05)
    assert slot.batcher is not old and slot.batcher.thread.is_alive()
    assert inference.lane(spec).running == 0 and slot.users == 0
    release.set()
    items, error = stream(inference, "次の方", SamplingOptions(temperature=0, max_new_tokens=8))
    assert error is None and isinstance(items[-1], Finished) and items[-1].completion_tokens > 0


def test_four_addresses_asking_all_they_may_leave_a_place_for_a_fifth_visitor(models_dir: Path) -> None:
    """24 long replies from 4 addresses fill the batch (8) and the queue (16); a fifth visitor's chat is served."""
    backend = TransformersBackend(models_dir=models_dir, max_loaded=2)
    inference = Inference(REGISTRY, backend, max_batch=8, max_queue=16)
    backend.load(REGISTRY.get("tiny-llama"))
    backend._slots["tiny-llama"].batcher.eos = -1  # random weights: only their length ends the long replies
    long = SamplingOptions(temperature=0, max_new_tokens=2048)

    async def main() -> tuple[list, list]:
        stops = [threading.Event() for _ in range(24)]

        async def greedy(i: int):
            items = []
            try:
                async for item in inference.stream(
                    "tiny-llama", [], f"長い話 {i}", long, stop=stops[i], who=(f"addr-{i % 4}", f"id-{i % 12}")
                ):
                    items.append(item)
            except AppError as exc:
                return exc
            return items[-1]

        crowd = [asyncio.create_task(greedy(i)) for i in range(24)]
        lane = inference.lane(REGISTRY.get("tiny-llama"))
        while lane.waiting < 16:
            await asyncio.sleep(0.01)
        short = SamplingOptions(temperature=0, max_new_tokens=8)
        fifth = [
            item async for item in inference.stream("tiny-llama", [], "こんにちは", short, who=("addr-new", "id-new"))
        ]
        for stop in stops:
            stop.set()
        return fifth, await asyncio.gather(*crowd)

    fifth, crowd = asyncio.run(asyncio.wait_for(main(), 60))
    assert isinstance(fifth[-1], Finished) and fifth[-1].completion_tokens == 8
    assert any(isinstance(c, Finished) and c.finish_reason == "shared" for c in crowd)  # one made room
    assert sum(isinstance(c, AppError) for c in crowd) == 1  # the place it took in the full queue


def test_a_long_forward_on_a_slow_model_is_not_taken_for_a_stuck_loop(loaded) -> None:
    """The deadline of a forward grows with the work in it, measured on the forwards before."""

    class Slow:
        forward = loaded.model.forward

        def __getattr__(self, name: str):
            return getattr(loaded.model, name)

        def __call__(self, *, input_ids, **kwargs):
            time.sleep(0.004 * input_ids.numel())  # a slow machine: 4 ms per position computed
            return loaded.model(input_ids=input_ids, **kwargs)

    batcher = Batcher(Slow(), loaded.tokenizer, stall_s=0.3)
    short = Reply(prompt_ids(loaded, "a"), GREEDY.model_copy(update={"max_new_tokens": 2}))
    batcher.submit(short.request)
    assert short.text is not None  # measured: about 4 ms a position
    long = Reply(prompt_ids(loaded, "富士山について教えて。" * 12), GREEDY.model_copy(update={"max_new_tokens": 2}))
    assert len(long.request.ids) * 0.004 > 0.3  # its prefill takes longer than stall_s
    seen_stalled = []
    batcher.submit(long.request)
    while not long.request.done.wait(0.02):
        seen_stalled.append(batcher.stalled())
    assert long.text and not any(seen_stalled)
    batcher.close()
