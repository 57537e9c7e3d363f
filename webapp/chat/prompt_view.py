"""「プロンプトを表示」: the exact text a model was given for a reply, special tokens and all, with its length.

Researchers checking chat templates want what the model saw, not the
conversation as shown: the llm-jp-3 template, for one, writes its fixed
system sentence whatever system text is given, and the oldest turns may have
been left out to fit the context. The text comes from the prompt the engine
prepared (``inference.prompts.prepare``), so it is byte for byte what was
tokenised.
"""

from __future__ import annotations

import html
import re
from typing import Any

from webapp.i18n import pick


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``, so the prompt cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def prompt_section(lang: str | None, record: dict[str, Any]) -> str:
    """A folded section for the reply's note: the prompt text and its token count; empty when unknown."""
    text = record.get("prompt_text")
    if not isinstance(text, str) or not text:
        return ""
    tokens = record.get("prompt_tokens")
    count = pick(lang, f"{tokens} トークン", f"{tokens} tokens") if isinstance(tokens, int) else ""
    summary = pick(lang, "プロンプトを表示", "Show the prompt") + (f"({count})" if count else "")
    fence = _fence(text)
    # The summary is HTML (escaped); the prompt is a code block, so "<s>" and "### 指示:" show as written.
    return (
        f'<details class="prompt-view"><summary>{html.escape(summary)}</summary>\n\n'
        f"{fence}text\n{text}\n{fence}\n\n</details>"
    )
