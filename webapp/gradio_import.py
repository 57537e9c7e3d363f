"""Gradio's import without its stub writer: every ``import gradio`` re-derives each component's type stub
(``.pyi``) from its source and rewrites it in Gradio's own install, parsing each component's module twice.
That is half of the import (1.9 s of 3.9 s here; the app's start to its first page 5.7 s -> 3.8 s), paid
by every start of the app and by every process that builds it; the stubs only serve editors, ship with
Gradio's wheel, and the app never reads them. So when ``gradio.component_meta`` is loaded, its stub writer
is replaced by a no-op before any component class is defined. Anything else (a Gradio without that
function) is left as it is.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder, SourceFileLoader, SourcelessFileLoader
from types import ModuleType

MODULE = "gradio.component_meta"
WRITER = "create_or_modify_pyi"


def _no_stub(*args: object, **kwargs: object) -> None:
    return None


class _WithoutStubWriter(MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != MODULE:
            return None
        spec = PathFinder.find_spec(fullname, path)
        # A file loader is made for this one spec, so wrapping its exec_module touches no other module.
        if spec is None or not isinstance(spec.loader, SourceFileLoader | SourcelessFileLoader):
            return spec
        loader, exec_module = spec.loader, spec.loader.exec_module

        def exec_without_writer(module: ModuleType) -> None:
            exec_module(module)
            if callable(getattr(module, WRITER, None)):
                setattr(module, WRITER, _no_stub)

        loader.exec_module = exec_without_writer  # type: ignore[method-assign]  # this spec's own loader
        return spec


def install() -> None:
    """Before Gradio is imported in this process, or after it: then Gradio's own classes have had their stubs
    written, and the ones defined from now on (the app's ``Conversation``) write none into the app's tree."""
    if MODULE in sys.modules:
        if callable(getattr(sys.modules[MODULE], WRITER, None)):
            setattr(sys.modules[MODULE], WRITER, _no_stub)
    elif not any(isinstance(f, _WithoutStubWriter) for f in sys.meta_path):
        sys.meta_path.insert(0, _WithoutStubWriter())
