"""A backend built on first use, so the page is served before torch and transformers are imported.

Importing torch and transformers takes seconds, most of a cold start. The
page does not need them; the first reply (or a preload, or a warm-up a
moment after start) builds the real backend, importing them then.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

# transformers resolves its names lazily, importing submodules on first use. Two threads doing that at
# once can be handed a half-initialised module ("cannot import name 'AutoConfig' from 'transformers'"):
# it happened when the local backend's warm-up and a served model's preload began together. Every
# backend is built under this one lock, after the names below are bound on one thread.
_HEAVY = threading.RLock()
_TRANSFORMERS_NAMES = (
    "AutoConfig", "AutoModelForCausalLM", "AutoTokenizer", "DynamicCache", "GenerationConfig", "PreTrainedModel",
    "PreTrainedTokenizerFast", "PretrainedConfig",
)  # fmt: skip
_imported = False

# Building a model (from a checkpoint, or from a config to size or to make one) is not safe on two
# threads at once either: transformers creates the layers on the meta device and fills them in, and a
# model built beside another came out with its tied output layer left on the meta device, never loaded
# (a compare round's GPT-2 then found no valid next token). Every model is built under this lock.
BUILDING_MODELS = threading.RLock()


def heavy_import(module: str) -> ModuleType:
    """Import ``module``, one that imports torch or transformers, under the lock backends are built under.

    For the threads that need such a module outside a backend's build (a served model's preload
    builds its tokenizer files and its client on its own thread).
    """
    loaded = sys.modules.get(module)
    if loaded is not None and not getattr(loaded.__spec__, "_initializing", False):
        return loaded
    with _HEAVY:
        import_transformers()
        return importlib.import_module(module)


def import_transformers() -> None:
    """Import transformers and bind the names the project uses, one thread at a time, once."""
    global _imported
    if _imported:
        return
    with _HEAVY:
        if not _imported:
            import transformers

            for name in _TRANSFORMERS_NAMES:
                getattr(transformers, name)
            _imported = True


class Deferred:
    """Stands in for the backend ``build`` returns, building it once, when first needed."""

    def __init__(self, build: Callable[[], Any], *, name: str = "backend") -> None:
        self._build = build
        self._name = name
        self._backend: Any = None

    @property
    def built(self) -> bool:
        """Whether the real backend exists yet."""
        return self._backend is not None

    def get(self) -> Any:
        """The real backend, built on the first call (blocking: torch is imported here)."""
        if self._backend is not None:
            return self._backend
        with _HEAVY:
            if self._backend is None:
                log.info("building the %s", self._name)
                import_transformers()
                self._backend = self._build()
            return self._backend

    def warm_up(self, after: float = 0.0, then: Callable[[Any], None] | None = None) -> threading.Thread:
        """Build the backend on a background thread ``after`` seconds from now, then call ``then`` with it."""

        def run() -> None:
            try:
                backend = self.get()
                if then is not None:
                    then(backend)
            except Exception:  # a failed warm-up is retried by the first request, which reports it
                log.exception("warming up the %s failed", self._name)

        timer = threading.Timer(after, run)
        timer.daemon = True
        timer.name = f"warm-up-{self._name}"
        timer.start()
        return timer

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        return self.get().prepare(*args, **kwargs)

    def release(self, *args: Any, **kwargs: Any) -> None:
        if self._backend is not None:  # nothing can be held before it was built
            self._backend.release(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.get().generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)
