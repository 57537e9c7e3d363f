"""Which offered models can be loaded here, and why not: marked in the model list, refused before a reply.

A checkpoint that cannot load here (the hub is out of reach and it was never
downloaded, a gated repository without a token, weights larger than all the
memory of this machine) is still listed, so a visitor sees what the demo
serves elsewhere; it is marked unavailable with the reason, and a message to
it is refused at once, before the message box is emptied.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from inference import ModelSpec, hub
from inference.errors import ModelUnavailable
from webapp.i18n import pick

GB = 1000**3


def _on_gpu() -> bool:
    # torch is imported only when a real checkpoint is asked about: the page is served before it loads.
    import torch

    return torch.cuda.is_available()


def memory_capacity() -> int:
    """All the memory a model could ever have here: every visible GPU, else the machine's RAM."""
    if _on_gpu():
        import torch

        return sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _cached(spec: ModelSpec, cache_dir: str | None) -> bool:
    """Whether the checkpoint's config is in the hub cache (a download was made here)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.source, "config.json", cache_dir=cache_dir, revision=spec.revision)
    return isinstance(found, str)


class Availability:
    """Tells, cheaply and without loading anything, whether a model can load here."""

    def __init__(
        self,
        *,
        token: str | None,
        offline: Callable[[], bool],
        hub_cache: str | None = None,
        capacity: Callable[[], int] = memory_capacity,
    ) -> None:
        self._token = token
        self._offline = offline
        self._hub_cache = hub_cache
        self._capacity = capacity

    def reason(self, spec: ModelSpec) -> ModelUnavailable | None:
        """Why ``spec`` cannot load here, or None when it may."""
        if spec.tiny or spec.endpoint is not None or Path(spec.source).is_dir():
            return None  # built here, served elsewhere, or a local copy
        from inference.local.memory import HEADROOM

        capacity = self._capacity()
        weights = int(spec.weights_bytes * HEADROOM)
        if capacity and weights > capacity:
            device = "GPU" if _on_gpu() else "RAM"
            return ModelUnavailable(
                f"{spec.label} はこのマシンに載りません(重みだけで {weights / GB:.0f} GB、この{device}は全体で "
                f"{capacity / GB:.0f} GB)。vLLM サーバーで動かして接続できます(README)。",
                f"{spec.label} does not fit this machine (its weights alone take {weights / GB:.0f} GB; this "
                f"{device} has {capacity / GB:.0f} GB in all). It can be served by vLLM and connected (README).",
            )
        cached = _cached(spec, self._hub_cache)
        if spec.gated and not self._token and not cached:
            return hub.needs_token(spec)
        if not cached and self._offline():
            return hub.cannot_download(spec)
        return None

    def choices(self, specs: list[ModelSpec]) -> list[tuple[str, str]]:
        """The model list: each label, marked where the model cannot load here."""
        return [(s.label + (" (利用不可 / unavailable)" if self.reason(s) else ""), s.id) for s in specs]

    def note(self, spec: ModelSpec, lang: str | None) -> str:
        """A line for beside the model: why it cannot load, or nothing."""
        why = self.reason(spec)
        if why is None:
            return ""
        return f"**{pick(lang, '利用できません', 'Unavailable')}:** {pick(lang, why.ja, why.en)}"
