"""What a checkpoint needs in memory, and what the machine has free.

The need is computed before loading: the parameter count comes from the
model's config (instantiated on PyTorch's meta device, so any architecture
counts exactly and nothing is allocated), times the bytes of the dtype, plus
the KV cache for the model's whole context.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from inference.errors import ModelUnavailable
from inference.lazy import BUILDING_MODELS

GB = 1000**3
# Activations, the CUDA context and allocator slack come on top of weights and cache.
HEADROOM = 1.10


@dataclass(frozen=True)
class Need:
    """Bytes a model needs: weights, and a full-context KV cache per reply for ``rows`` replies at once."""

    parameters: int
    weights: int
    kv_cache: int
    """One reply at the model's whole context."""
    rows: int = 1
    """Replies generated together (``LLMJP_MAX_BATCH``)."""
    context: int = 0
    """The model's context, in tokens."""

    @property
    def kv_per_token(self) -> int:
        """Cache bytes one position of one reply takes."""
        return self.kv_cache // self.context if self.context else 0

    @property
    def total(self) -> int:
        """What loading takes at the least, with headroom for activations and allocator slack: one whole reply."""
        return int((self.weights + self.kv_cache) * HEADROOM)

    @property
    def planned(self) -> int:
        """What a full batch takes: ``rows`` replies at the whole context, with headroom."""
        return int((self.weights + self.kv_cache * self.rows) * HEADROOM)

    def kv_budget(self, free: int) -> int:
        """Cache positions (rows × length) the batch may hold, given ``free`` bytes after the weights are in.

        At least one reply at the whole context (loading was refused otherwise),
        at most ``rows`` of them.
        """
        if not self.kv_per_token:
            return self.rows * self.context
        fits = int(free / HEADROOM) // self.kv_per_token
        return max(self.context, min(fits, self.rows * self.context))


def parameter_count(config: PretrainedConfig) -> int:
    """Exact number of parameters of the model ``config`` describes, allocating nothing."""
    with BUILDING_MODELS, torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def need(config: PretrainedConfig, dtype: torch.dtype, context: int, rows: int = 1) -> Need:
    """What loading ``config`` in ``dtype`` and generating ``rows`` replies of up to ``context`` tokens takes."""
    text = config.get_text_config()
    parameters = parameter_count(config)
    size = torch.empty((), dtype=dtype).element_size()
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_cache = 2 * text.num_hidden_layers * kv_heads * head_dim * context * size
    return Need(parameters=parameters, weights=parameters * size, kv_cache=kv_cache, rows=rows, context=context)


def on_zero_gpu() -> bool:
    """Whether this is a ZeroGPU Space: CUDA is faked here and lent to a worker process per call."""
    from spaces.config import Config

    return bool(Config.zero_gpu)


def free_bytes() -> int:
    """Free memory where the model would go: all visible GPUs together, else available RAM."""
    if on_zero_gpu():
        # No real GPU in this process to ask; a call gets a whole slice of this size.
        return int(torch.cuda.get_device_properties(0).total_memory)
    if torch.cuda.is_available():
        return sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0  # unknown: refuse rather than crash the process later


def in_use() -> int:
    """Bytes this process holds where models go: on all GPUs, else its resident memory."""
    if torch.cuda.is_available() and not on_zero_gpu():
        return sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count()))
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def watch_growth(expected: int, report: Callable[[int, int], None], every: float = 0.25) -> Iterator[None]:
    """Report, while the block runs, how much of ``expected`` bytes has arrived in memory.

    Loading weights has no progress hook of its own; the memory it takes up
    is the progress, measured from outside the loader.
    """
    start = in_use()
    done = threading.Event()

    def poll() -> None:
        while not done.wait(every):
            report(min(max(in_use() - start, 0), expected), expected)

    report(0, expected)
    watcher = threading.Thread(target=poll, name="load-progress", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
    report(expected, expected)


def refuse(model_label: str, required: Need, free: int, busy: list[str] | None = None) -> ModelUnavailable:
    """The message for a model that does not fit: what it needs, what is free, what to do.

    ``busy`` names loaded models that are in use, and so were not unloaded to make room.
    """
    numbers = (
        f"{required.total / GB:.1f} GB (weights {required.weights / GB:.1f} GB, KV cache "
        f"{required.kv_cache / GB:.1f} GB for one reply, plus headroom; {required.rows} replies at once: "
        f"{required.planned / GB:.1f} GB); {free / GB:.1f} GB free"
    )
    if busy:
        names = ", ".join(busy)
        return ModelUnavailable(
            f"{model_label} は今は載りません: 必要 {numbers}。使用中のモデル({names})は外せません。"
            "しばらくしてからもう一度お試しください。",
            f"{model_label} does not fit now: it needs {numbers}, and the models in use ({names}) "
            "are not unloaded while visitors use them. Please try again shortly.",
        )
    device = "GPU" if torch.cuda.is_available() else "RAM"
    return ModelUnavailable(
        f"{model_label} はこの{device}に載りません: 必要 {numbers}。"
        "より小さいモデルを選ぶか、このモデルを vLLM サーバーで動かして接続してください(README)。",
        f"{model_label} does not fit this machine's {device}: it needs {numbers}. "
        "Choose a smaller model, or serve this one with vLLM and point the demo at it (README).",
    )


def refuse_busy(model_label: str, max_loaded: int, busy: list[str]) -> ModelUnavailable:
    """The message when every model slot holds a model in use."""
    names = ", ".join(busy)
    return ModelUnavailable(
        f"{model_label} を今は読み込めません: 同時に読み込めるモデル {max_loaded} 個がすべて使用中です({names})。"
        "しばらくしてからもう一度お試しください。",
        f"{model_label} cannot be loaded now: all {max_loaded} model slots hold models in use ({names}). "
        "Please try again shortly.",
    )
