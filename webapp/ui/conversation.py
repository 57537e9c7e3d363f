"""The conversation component: Gradio's chatbot, showing every message exactly as it was written."""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.components.chatbot import TextMessage


class Conversation(gr.Chatbot):
    """``gr.Chatbot`` without the rewriting of plain-text messages.

    Gradio passes a message given as a string through ``inspect.cleandoc``: tabs become spaces, the lines
    after the first lose their common indentation, leading blank lines go. A reply with code, or a
    pasted program, was shown altered, and, since what the browser sends back is the altered text, a
    rating of it no longer matched what the server sent and was refused. Every message the page shows
    goes through this one component, so none is rewritten, whatever path produced it. Gradio's stub writer,
    which would write a ``.pyi`` beside this module, is off (``webapp.gradio_import``).
    """

    # Drawn by the frontend as Gradio's own chatbot (a "template" component takes its base's name).
    is_template = True

    def _postprocess_content(self, chat_message: Any) -> Any:
        if isinstance(chat_message, str):
            return TextMessage(text=chat_message)
        return super()._postprocess_content(chat_message)
