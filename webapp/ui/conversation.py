"""The conversation component: Gradio's chatbot, showing every message exactly as it was written."""

from __future__ import annotations

from abc import ABCMeta
from typing import Any

import gradio as gr
from gradio.component_meta import ComponentMeta
from gradio.components.chatbot import TextMessage


class _NoStub(ComponentMeta):
    """Gradio's component metaclass writes a ``.pyi`` stub beside the module of every component class (for
    its own editors); the app must not write into its source tree, and a subclass with no events of its own
    needs none. Everything else the metaclass does concerns classes that define events or ``__init__``."""

    def __new__(mcs, name: str, bases: tuple[type, ...], attrs: dict[str, Any]) -> Any:
        assert "EVENTS" not in attrs and "__init__" not in attrs, "use ComponentMeta for a new component"
        return ABCMeta.__new__(mcs, name, bases, attrs)


class Conversation(gr.Chatbot, metaclass=_NoStub):
    """``gr.Chatbot`` without the rewriting of plain-text messages.

    Gradio passes a message given as a string through ``inspect.cleandoc``: tabs become spaces, the lines
    after the first lose their common indentation, leading blank lines go. A reply with code, or a
    pasted program, was shown altered, and, since what the browser sends back is the altered text, a
    rating of it no longer matched what the server sent and was refused. Every message the page shows
    goes through this one component, so none is rewritten, whatever path produced it.
    """

    # Drawn by the frontend as Gradio's own chatbot (a "template" component takes its base's name).
    is_template = True

    def _postprocess_content(self, chat_message: Any) -> Any:
        if isinstance(chat_message, str):
            return TextMessage(text=chat_message)
        return super()._postprocess_content(chat_message)
