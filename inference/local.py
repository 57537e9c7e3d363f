"""The local backend: transformers models on this machine's GPU or CPU."""

from __future__ import annotations

import gc
import importlib.util
import logging
import math
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import spaces
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.generation.streamers import BaseStreamer

from inference import hub, memory, prompts, tiny
from inference.errors import AppError, GenerationFailed, OutOfMemory
from inference.progress import Downloading, Loading, Status
from inference.prompts import Message
from inference.registry import Architecture, ModelSpec
from inference.sampling import SamplingOptions
from inference.streaming import IncrementalDecoder

log = logging.getLogger(__name__)


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


class _Stopped(Exception):
    """Raised inside ``generate`` to end it once the request is cancelled."""


class _DeltaStreamer(BaseStreamer):
    """Feeds generated ids (not the prompt) to an ``IncrementalDecoder``, and stops on request.

    ``generate`` calls ``put`` once per token step, so checking the stop event
    here ends generation within one step. It costs less than a stopping
    criterion, which adds a tensor and a device sync to every step.
    """

    def __init__(self, tokenizer: Any, emit: Callable[[str], None], stop: threading.Event) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.emit = emit
        self.stop = stop
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self.stop.is_set():
            raise _Stopped
        if not self.prompt_seen:  # generate() first passes the prompt itself
            self.prompt_seen = True
            return
        if text := self.decoder.push(value.reshape(-1).tolist()):
            self.emit(text)

    def end(self) -> None:
        if text := self.decoder.flush():
            self.emit(text)


class TransformersBackend:
    """Loads checkpoints lazily and generates with ``model.generate``."""

    def __init__(
        self, *, models_dir: Path, hf_token: str | None = None, max_loaded: int = 1, offline: bool = False
    ) -> None:
        self.models_dir = models_dir
        self._token = hf_token
        # Offline, only the local cache is looked at: failing at once beats
        # the hub client's retries against a network that is not there.
        self._offline = offline
        self._max_loaded = max_loaded
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._needs: dict[str, memory.Need] = {}
        self._lock = threading.Lock()

    def is_loaded(self, model_id: str) -> bool:
        """Whether ``model_id`` is in memory now."""
        return model_id in self._loaded

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
                config = AutoConfig.from_pretrained(
                    self._source(spec), token=self._token, local_files_only=self._offline
                )
            except (OSError, ValueError) as exc:
                raise hub.explain(spec, exc) from exc
            self._needs[spec.id] = memory.need(config, self._dtype(spec), spec.context)
        return self._needs[spec.id]

    def load(self, spec: ModelSpec, report: Callable[[Status], None] | None = None) -> Loaded:
        """The loaded model for ``spec``, loading it (and evicting others) if needed.

        Models are kept least-recently-used first, bounded by count and by
        memory: before loading, others are unloaded until the new one fits, and
        a model that cannot fit at all is refused before anything is read.
        ``report`` hears download and load progress.
        """
        with self._lock:
            if spec.id in self._loaded:
                self._loaded.move_to_end(spec.id)
                return self._loaded[spec.id]
            while len(self._loaded) >= self._max_loaded:
                self._evict()
            required = self.need(spec)
            while self._loaded and required.total > memory.free_bytes():
                self._evict()
            if required.total > (free := memory.free_bytes()):
                raise memory.refuse(spec.label, required, free)
            loaded = self._load(spec, required, report or _ignore)
            self._loaded[spec.id] = loaded
            return loaded

    def _evict(self) -> None:
        model_id, _ = self._loaded.popitem(last=False)
        log.info("unloading %s", model_id)
        self._free()

    def _load(self, spec: ModelSpec, required: memory.Need, report: Callable[[Status], None]) -> Loaded:
        source, dtype = self._source(spec), self._dtype(spec)
        log.info("loading %s from %s (%s, %s)", spec.id, source, dtype, attention_implementation())
        try:
            hub_options = {"token": self._token, "local_files_only": self._offline}
            if not self._offline and not Path(source).is_dir():
                # Fetched first, on its own, so the visitor sees the bytes arrive.
                source = hub.download(
                    str(source), token=self._token, report=lambda done, total: report(Downloading(done, total))
                )
            tokenizer = AutoTokenizer.from_pretrained(source, **hub_options)
            with memory.watch_growth(required.weights, lambda done, total: report(Loading(done, total))):
                model = AutoModelForCausalLM.from_pretrained(
                    source,
                    dtype=dtype,
                    device_map="auto",
                    attn_implementation=attention_implementation(),
                    **hub_options,
                )
        except torch.OutOfMemoryError:
            self._free()
            raise OutOfMemory() from None
        except (OSError, ValueError) as exc:
            raise hub.explain(spec, exc) from exc
        model.eval()
        return Loaded(model=model, tokenizer=tokenizer)

    @staticmethod
    def _free() -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
        *,
        report: Callable[[Status], None] | None = None,
    ) -> None:
        """Generate a reply to ``messages``, passing each text delta to ``emit``; blocking."""
        loaded = self.load(spec, report)
        if memory.on_zero_gpu():
            self._generate_on_zero_gpu(spec, messages, options, emit, stop)
        else:
            self._generate(loaded, spec, messages, options, emit, stop)

    def _generate_on_zero_gpu(
        self,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        # The model was loaded in this process; ZeroGPU forks a worker that
        # inherits it and gets the GPU for the call. Text comes back through
        # the generator; closing it makes ZeroGPU stop the worker's generator.
        global _ZERO_GPU_BACKEND
        _ZERO_GPU_BACKEND = self
        deltas = generate_on_gpu(spec, list(messages), options)
        try:
            for item in deltas:
                if stop.is_set():
                    return
                if isinstance(item, AppError):
                    raise item
                emit(item)
        finally:
            deltas.close()

    def _generate(
        self,
        loaded: Loaded,
        spec: ModelSpec,
        messages: Sequence[Message],
        options: SamplingOptions,
        emit: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        tok = loaded.tokenizer
        _, ids, max_new_tokens = prompts.encode(tok, spec.prompt_format, messages, spec.context, options.max_new_tokens)
        input_ids = torch.tensor([ids])
        kwargs = options.generate_kwargs() | {"max_new_tokens": max_new_tokens}
        if options.seed is not None:
            torch.manual_seed(options.seed)  # a seeded request samples the same tokens again
        try:
            with torch.inference_mode():
                loaded.model.generate(
                    input_ids.to(loaded.model.device),
                    attention_mask=torch.ones_like(input_ids).to(loaded.model.device),
                    streamer=_DeltaStreamer(tok, emit, stop),
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                    eos_token_id=tok.eos_token_id,
                    **kwargs,
                )
        except _Stopped:
            return
        except torch.OutOfMemoryError:
            self._free()
            raise OutOfMemory() from None
        except AppError:
            raise
        except Exception as exc:
            log.exception("generation failed for %s", spec.id)
            raise GenerationFailed(
                f"生成中にエラーが発生しました({type(exc).__name__})。もう一度お試しください。",
                f"Generation failed ({type(exc).__name__}). Please try again.",
            ) from exc


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


def zero_gpu_seconds(spec: ModelSpec, messages: list[Message], options: SamplingOptions) -> int:
    """GPU time to ask ZeroGPU for one reply: start-up plus ``max_new_tokens`` at a safe speed.

    Asking for more than needed lowers a visitor's place in ZeroGPU's queue;
    asking for less ends the reply early.
    """
    return min(ZERO_GPU_MAX_S, ZERO_GPU_START_S + math.ceil(options.max_new_tokens / ZERO_GPU_TOKENS_PER_S))


@spaces.GPU(duration=zero_gpu_seconds)
def generate_on_gpu(spec: ModelSpec, messages: list[Message], options: SamplingOptions) -> Iterator[str | AppError]:
    """Yield the reply's text deltas, then stop; closing the generator stops generation within one step.

    On ZeroGPU this runs in the GPU worker process, so its arguments and what
    it yields are pickled: a visitor's error is yielded, not raised, to keep
    its bilingual message (ZeroGPU would replace a raised one with its own).
    """
    backend = _ZERO_GPU_BACKEND
    if backend is None:
        raise RuntimeError("generate_on_gpu is called through TransformersBackend.generate")
    deltas: queue.SimpleQueue[str | AppError | None] = queue.SimpleQueue()
    stop = threading.Event()

    def run() -> None:
        try:
            # Loaded before the call, in the main process; this one inherited it.
            backend._generate(backend.load(spec), spec, messages, options, deltas.put, stop)
        except AppError as exc:
            deltas.put(exc)
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
