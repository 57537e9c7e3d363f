"""The local backend: transformers models on this machine's GPU or CPU."""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import spaces
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from inference import hub, prompts
from inference.errors import AppError, OutOfMemory
from inference.lazy import BUILDING_MODELS
from inference.local import memory, tiny
from inference.local.batcher import Batcher, DeviceBroken, Request, generation_failed
from inference.progress import Downloading, FinishReason, Loading, Outcome, Status
from inference.prompts import Message, Prompt
from inference.registry import Architecture, ModelSpec
from inference.sampling import SamplingOptions

log = logging.getLogger(__name__)

WATCH_S = 1.0
"""How often the watchdog looks at each model's generation loop."""
STALL_S = 60.0
"""A loop with requests in hand that finishes no step for this long is taken to be stuck (``LLMJP_STALL_S``)."""


@dataclass(frozen=True)
class Loaded:
    """A model ready to generate, with its tokenizer."""

    model: Any
    tokenizer: Any


def attention_implementation() -> str:
    """flash-attn where it is installed and a GPU is present, else PyTorch SDPA."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _ignore(_: Status) -> None:
    pass


@dataclass(eq=False)
class _Slot:
    """A loaded model, its generation thread, and the requests that hold it."""

    loaded: Loaded
    batcher: Batcher | None
    """None on ZeroGPU, where each reply runs in a GPU worker process instead."""
    revision: str | None
    bytes: int
    kv_budget: int | None = None
    """Cache positions its replies may hold together (``Need.kv_budget``); reserved beside other models."""
    kv_bytes: int = 0
    users: int = 0
    """Requests running or waiting for this model; while any do, it is never unloaded."""
    used: float = 0.0


@dataclass(eq=False)
class _Arrival:
    """A model being downloaded and loaded; every request waiting for it hears the progress."""

    listeners: list[Callable[[Status], None]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    bytes: int = 0

    def report(self, status: Status) -> None:
        for listener in list(self.listeners):
            listener(status)


class TransformersBackend:
    """Loads checkpoints on demand and generates with continuous batching, one thread per loaded model.

    Several models stay loaded while memory and ``max_loaded`` allow. A model
    that requests hold (running or waiting) is never unloaded to make room:
    an idle one is, least recently used first, or the new model is refused
    with the figures. Downloads and loads run on the callers' threads (the
    engine's preparation threads), never on a model's generation thread.
    """

    def __init__(
        self,
        *,
        models_dir: Path,
        hf_token: str | None = None,
        max_loaded: int = 1,
        offline: bool | Callable[[], bool] = False,
        max_batch: int = 8,
        hub_cache: Path | None = None,
        stall_s: float = STALL_S,
    ) -> None:
        self.models_dir = models_dir
        self._token = hf_token
        # Offline, only the local caches are looked at: failing at once beats
        # the hub client's retries against a network that is not there. A
        # callable is asked each time (the hub may come back).
        self._offline = offline if callable(offline) else (lambda: offline)
        self._hub_cache = str(hub_cache) if hub_cache else None
        self._max_loaded = max_loaded
        self.max_batch = max_batch
        self._slots: dict[str, _Slot] = {}
        self._arrivals: dict[str, _Arrival] = {}
        self._needs: dict[str, memory.Need] = {}
        self._lock = threading.Condition()
        self.stall_s = stall_s
        self._watchdog: threading.Thread | None = None

    def is_loaded(self, model_id: str) -> bool:
        """Whether ``model_id`` is in memory now."""
        return model_id in self._slots

    def loaded_ids(self) -> list[str]:
        """The models in memory now."""
        return list(self._slots)

    def _source(self, spec: ModelSpec) -> str | Path:
        return tiny.ensure(Architecture(spec.source), self.models_dir) if spec.tiny else spec.source

    def _dtype(self, spec: ModelSpec) -> torch.dtype:
        # Half precision is for GPUs; on a CPU bf16/fp16 matmuls are slow or
        # missing, so weights are widened to fp32 there.
        return getattr(torch, spec.dtype) if torch.cuda.is_available() else torch.float32

    def need(self, spec: ModelSpec) -> memory.Need:
        """Memory ``spec`` needs here, from its config alone (a few kB from the hub)."""
        if spec.id not in self._needs:
            try:
                source = self._source(spec)
                if not Path(source).is_dir():
                    # Without a token the hub refuses a gated repository: only a cached copy can serve.
                    refused = spec.gated and not self._token
                    try:
                        # The config alone, to size the model before committing to a download.
                        source = hub.config_only(
                            str(source), token=self._token, revision=spec.revision,
                            offline=refused or self._offline(), cache_dir=self._hub_cache,
                        )  # fmt: skip
                    except OSError:
                        if refused:
                            raise hub.needs_token(spec) from None
                        raise
                config = AutoConfig.from_pretrained(source)
            except (OSError, ValueError) as exc:
                raise hub.explain(spec, exc) from exc
            self._needs[spec.id] = memory.need(config, self._dtype(spec), spec.context, rows=self.max_batch)
        return self._needs[spec.id]

    # -- holding models -------------------------------------------------------

    def acquire(self, spec: ModelSpec, report: Callable[[Status], None] | None = None) -> Loaded:
        """The loaded model for ``spec``, held for the caller until ``release``; loads it if needed.

        Callers asking for a model that is on its way wait for the same load
        and all hear its progress. Blocking: call it off the event loop.
        """
        report = report or _ignore
        while True:
            with self._lock:
                if (slot := self._slots.get(spec.id)) is not None:
                    slot.users += 1
                    slot.used = time.monotonic()
                    return slot.loaded
                arrival = self._arrivals.get(spec.id)
                if arrival is None:
                    arrival = self._arrivals[spec.id] = _Arrival([report])
                    break
                arrival.listeners.append(report)
            arrival.done.wait()
            arrival.listeners.remove(report)
            if arrival.error is not None:
                raise arrival.error
        try:
            arrived = self._arrive(spec, arrival)
        except BaseException as exc:
            arrival.error = exc
            raise
        finally:
            with self._lock:
                del self._arrivals[spec.id]
                if arrival.error is None:
                    self._slots[spec.id] = arrived
                    arrived.users += 1  # this caller; the waiters take theirs as they wake
                    arrived.used = time.monotonic()
                arrival.done.set()
        return arrived.loaded

    def release(self, spec: ModelSpec) -> None:
        """Give back a hold taken by ``acquire`` (or ``prepare``)."""
        with self._lock:
            if (slot := self._slots.get(spec.id)) is not None:
                slot.users = max(slot.users - 1, 0)
                self._lock.notify_all()

    def load(self, spec: ModelSpec, report: Callable[[Status], None] | None = None) -> Loaded:
        """The loaded model for ``spec``, loading it (and unloading idle others) if needed."""
        loaded = self.acquire(spec, report)
        self.release(spec)
        return loaded

    def _arrive(self, spec: ModelSpec, arrival: _Arrival) -> _Slot:
        """Make room for ``spec`` (refusing what cannot fit without unloading a model in use), then load it."""
        required = self.need(spec)
        with self._lock:
            while len(self._slots) + len(self._arrivals) - 1 >= self._max_loaded and self._evict_idle():
                pass
            reserved = self._reserved()
            while required.total > memory.free_bytes() - reserved and self._evict_idle():
                reserved = self._reserved()
            busy = [i for i, s in self._slots.items() if s.users]
            if len(self._slots) + len(self._arrivals) - 1 >= self._max_loaded:
                raise memory.refuse_busy(spec.label, self._max_loaded, busy)
            if required.total > (free := memory.free_bytes() - self._reserved()):
                raise memory.refuse(spec.label, required, free, busy=busy)
            arrival.bytes = required.total
        return self._load(spec, required, arrival.report)

    def _reserved(self) -> int:
        """Memory promised but not yet taken: models on their way, and the KV budgets of loaded ones."""
        return sum(a.bytes for a in self._arrivals.values()) + sum(s.kv_bytes for s in self._slots.values())

    def _evict_idle(self) -> bool:
        """Unload the least recently used model no request holds; False when there is none."""
        idle = [(s.used, i) for i, s in self._slots.items() if not s.users]
        if not idle:
            return False
        model_id = min(idle)[1]
        slot = self._slots.pop(model_id)
        log.info("unloading %s", model_id)
        if slot.batcher is not None:
            slot.batcher.close()
            slot.batcher.join(timeout=10)  # idle, it ends at once and lets go of the model
        del slot
        self._free()
        return True

    def _load(self, spec: ModelSpec, required: memory.Need, report: Callable[[Status], None]) -> _Slot:
        source, dtype = self._source(spec), self._dtype(spec)
        log.info("loading %s from %s (%s, %s)", spec.id, source, dtype, attention_implementation())
        revision = spec.revision
        try:
            if not Path(source).is_dir():
                # Fetched first, on its own, so the visitor sees the bytes arrive;
                # offline, the cached snapshot of the pinned revision is found.
                source = hub.download(
                    str(source),
                    token=self._token,
                    revision=spec.revision,
                    offline=self._offline(),
                    cache_dir=self._hub_cache,
                    report=lambda done, total: report(Downloading(done, total)),
                )
                revision = Path(source).name  # the snapshot directory is named by its commit
            tokenizer = AutoTokenizer.from_pretrained(source)
            # Another model's load runs first; its growth is not counted as this one's.
            with BUILDING_MODELS, memory.watch_growth(required.weights, lambda d, t: report(Loading(d, t))):
                model = AutoModelForCausalLM.from_pretrained(
                    source,
                    dtype=dtype,
                    device_map="auto",
                    attn_implementation=attention_implementation(),
                )
        except torch.OutOfMemoryError:
            self._free()
            raise OutOfMemory() from None
        except (OSError, ValueError) as exc:
            raise hub.explain(spec, exc) from exc
        model.eval()
        loaded = Loaded(model=model, tokenizer=tokenizer)
        with self._lock:
            # What is free now that the weights are in, less what other loaded models may still claim.
            free = memory.free_bytes() - sum(s.kv_bytes for s in self._slots.values())
        budget = required.kv_budget(free)
        slot = _Slot(loaded, None, revision, required.total, budget, budget * required.kv_per_token)
        if not memory.on_zero_gpu():
            slot.batcher = self._batcher(spec.id, slot)
            self._watch()
        return slot

    def _batcher(self, model_id: str, slot: _Slot) -> Batcher:
        model, tokenizer = slot.loaded.model, slot.loaded.tokenizer
        return Batcher(
            model, tokenizer, max_batch=self.max_batch, name=model_id, kv_budget=slot.kv_budget, stall_s=self.stall_s
        )

    # -- the watchdog -----------------------------------------------------------

    def _watch(self) -> None:
        with self._lock:
            if self._watchdog is None or not self._watchdog.is_alive():
                self._watchdog = threading.Thread(target=self._patrol, name="generation-watchdog", daemon=True)
                self._watchdog.start()

    def _patrol(self) -> None:
        """Every ``WATCH_S``: a model whose loop has died or stalled has its replies ended and a fresh loop."""
        while True:
            time.sleep(WATCH_S)
            try:
                self.check()
            except Exception:  # the watchdog itself must outlive any one check
                log.exception("the generation watchdog's check failed")

    def check(self) -> list[str]:
        """Look at every model's loop once; restart those that died or stalled. The models restarted."""
        restarted = []
        with self._lock:
            for model_id, slot in list(self._slots.items()):
                batcher = slot.batcher
                if batcher is None or not batcher.thread.ident:
                    continue
                dead = not batcher.thread.is_alive()
                stalled = batcher.stalled()
                if not (dead or stalled):
                    continue
                ended = batcher.abandon(generation_failed())
                broken = isinstance(batcher.failure, DeviceBroken)
                log.error(
                    "%s: its generation loop %s; %d replies ended with a message; %s",
                    model_id, "stalled" if stalled else "ended", ended,
                    "the model is reloaded on its next request" if broken else "a fresh loop takes over",
                )  # fmt: skip
                if broken:
                    del self._slots[model_id]  # nothing computed on that device state can be trusted
                    self._free()
                else:
                    slot.batcher = self._batcher(model_id, slot)
                restarted.append(model_id)
            self._lock.notify_all()
        return restarted

    @staticmethod
    def _free() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- generating -----------------------------------------------------------

    def prepare(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        *,
        report: Callable[[Status], None] | None = None,
    ) -> Prompt:
        """Hold the model (loading it if needed) and tokenise the conversation, oldest turns dropped to fit."""
        loaded = self.acquire(spec, report)
        try:
            return prompts.prepare(loaded.tokenizer, spec.prompt_format, messages, spec.context, options.max_new_tokens)
        except BaseException:
            self.release(spec)
            raise

    def generate(
        self,
        spec: ModelSpec,
        messages: Sequence[Message] | Prompt,
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
        *,
        report: Callable[[Status], None] | None = None,
        make_room: threading.Event | None = None,
    ) -> Outcome:
        """Generate a reply, passing each text delta to ``emit``; blocking until it has ended.

        Given raw messages it prepares them (and holds the model) itself; a
        ``Prompt`` from ``prepare`` comes with the hold its caller took.
        """
        if isinstance(messages, Prompt):
            return self._reply(spec, messages, options, emit, stop, report, make_room)
        prompt = self.prepare(spec, messages, options, report=report)
        try:
            return self._reply(spec, prompt, options, emit, stop, report, make_room)
        finally:
            self.release(spec)

    def _reply(
        self,
        spec: ModelSpec,
        prompt: Prompt,
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
        report: Callable[[Status], None] | None = None,
        make_room: threading.Event | None = None,
    ) -> Outcome:
        slot = self._slots.get(spec.id)
        if slot is None:
            raise RuntimeError(f"{spec.id} is not held: prepare it first")
        if slot.batcher is None:
            completion, reason = self._generate_on_zero_gpu(spec, prompt, options, emit, stop)
        else:
            request = Request(prompt.ids, options, prompt.max_new_tokens, emit, stop, report=report or _ignore)
            if make_room is not None:
                request.make_room = make_room
            batcher = slot.batcher
            batcher.submit(request)
            # The watchdog answers a request whose loop dies or stalls; this wait is bounded on its own as well.
            while not request.done.wait(WATCH_S):
                if not batcher.thread.is_alive() and request.finish("cancelled", generation_failed()):
                    break
            if request.error is not None:
                raise self._explain(spec, request.error)
            completion, reason = request.completion_tokens, request.finish_reason
        return Outcome(len(prompt.ids), completion, reason, slot.revision, prompt.dropped_turns)

    def _explain(self, spec: ModelSpec, exc: BaseException) -> BaseException:
        if isinstance(exc, torch.OutOfMemoryError):
            self._free()
            return OutOfMemory()
        if isinstance(exc, AppError):
            return exc
        log.error("generation failed for %s", spec.id, exc_info=exc)
        return generation_failed()

    def _generate_on_zero_gpu(
        self,
        spec: ModelSpec,
        prompt: Prompt,
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
    ) -> tuple[int, FinishReason]:
        # The model was loaded in this process; ZeroGPU forks a worker that
        # inherits it and gets the GPU for the call. Text comes back through
        # the generator; closing it makes ZeroGPU stop the worker's generator.
        global _ZERO_GPU_BACKEND
        _ZERO_GPU_BACKEND = self
        deltas = generate_on_gpu(spec, prompt, options)
        try:
            for item in deltas:
                if stop.is_set():
                    return 0, "cancelled"
                if isinstance(item, AppError):
                    raise item
                if isinstance(item, tuple):
                    return item
                emit(item)
        finally:
            deltas.close()
        # The worker ended without its outcome (it died, or ZeroGPU ended it): never a silent empty reply.
        raise generation_failed()

    def generate_alone(
        self,
        spec: ModelSpec,
        prompt: Prompt,
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
    ) -> tuple[int, FinishReason]:
        """One reply on the calling thread, as a batch of one (the ZeroGPU worker's path)."""
        slot = self._slots.get(spec.id)
        if slot is None:
            raise RuntimeError(f"{spec.id} is not loaded")
        request = Request(prompt.ids, options, prompt.max_new_tokens, emit, stop)
        Batcher(slot.loaded.model, slot.loaded.tokenizer, max_batch=1, start=False).run_alone(request)
        if request.error is not None:
            raise self._explain(spec, request.error)
        return request.completion_tokens, request.finish_reason


# -- ZeroGPU ---------------------------------------------------------------
# On a ZeroGPU Space a GPU is lent per call to a function decorated with
# ``spaces.GPU``, for a duration asked up front; elsewhere the decorator
# returns the function unchanged and this path is not taken.

_ZERO_GPU_BACKEND: TransformersBackend | None = None
ZERO_GPU_START_S = 15
"""Worker start-up, moving the weights onto the GPU, and the prefill."""
ZERO_GPU_TOKENS_PER_S = 20
"""A cautious decoding speed for the largest model a slice holds (13b in bf16); not yet measured there."""
ZERO_GPU_MAX_S = 120


def zero_gpu_seconds(spec: ModelSpec, prompt: Prompt | list[Message], options: SamplingOptions) -> int:
    """GPU time to ask ZeroGPU for one reply: start-up plus ``max_new_tokens`` at a safe speed.

    Asking for more than needed lowers a visitor's place in ZeroGPU's queue;
    asking for less ends the reply early.
    """
    return min(ZERO_GPU_MAX_S, ZERO_GPU_START_S + math.ceil(options.max_new_tokens / ZERO_GPU_TOKENS_PER_S))


@spaces.GPU(duration=zero_gpu_seconds)
def generate_on_gpu(
    spec: ModelSpec, prompt: Prompt, options: SamplingOptions
) -> Iterator[str | AppError | tuple[int, FinishReason]]:
    """Yield the reply's text deltas, then (completion tokens, finish reason); closing it stops generation.

    On ZeroGPU this runs in the GPU worker process, so its arguments and what
    it yields are pickled: a visitor's error is yielded, not raised, to keep
    its bilingual message (ZeroGPU would replace a raised one with its own).
    Replies here are not batched: each call has the GPU to itself.
    """
    backend = _ZERO_GPU_BACKEND
    if backend is None:
        raise RuntimeError("generate_on_gpu is called through TransformersBackend.generate")
    deltas: queue.SimpleQueue[str | AppError | tuple[int, FinishReason] | None] = queue.SimpleQueue()
    stop = threading.Event()

    def run() -> None:
        try:
            # Loaded before the call, in the main process; this one inherited it.
            deltas.put(backend.generate_alone(spec, prompt, options, deltas.put, stop))
        except AppError as exc:
            deltas.put(exc)
        except BaseException as exc:  # the same boundary as the batching loop's: the visitor hears of it
            log.error("generation failed on the GPU worker", exc_info=exc)
            deltas.put(generation_failed())
        finally:
            deltas.put(None)

    worker = threading.Thread(target=run, name="zero-gpu-generate")
    worker.start()
    try:
        while (item := deltas.get()) is not None:
            yield item
    finally:
        stop.set()
        worker.join()
