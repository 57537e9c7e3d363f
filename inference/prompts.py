"""Prompt formats of the three LLM-jp families, as chat templates.

Every prompt goes through ``tokenizer.apply_chat_template``. The llm-jp-3
tokenizers carry their own template; the older models' tokenizers have none,
so the registry supplies one from here. Rendered text is always encoded with
``add_special_tokens=False``: templates that need a BOS write it themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypedDict

from inference.errors import InvalidInput

SYSTEM_SENTENCE = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"


class Message(TypedDict):
    """One chat turn, in the role/content shape every chat template expects."""

    role: Literal["system", "user", "assistant"]
    content: str


class PromptFormat(StrEnum):
    """How a checkpoint expects its conversation to be written out."""

    LLMJP3_CHAT = "llm-jp-3-chat"
    """llm-jp-3 / 3.1 instruct: the tokenizer's template, with BOS, EOS after replies."""
    LLMJP_V11_ALPACA = "llm-jp-v1.1-alpaca"
    """llm-jp-13b-instruct v1.1: Alpaca-style, ends with a newline after 応答:."""
    WEBLAB_ALPACA = "weblab-alpaca"
    """weblab-10b-instruction-sft: Alpaca-style, no newline after the last 応答:."""
    COMPLETION = "completion"
    """Base models: the text is continued as written."""


# Byte for byte the template the llm-jp-3 / 3.1 instruct tokenizers carry
# (llm-jp/instruct3, scripts/ckpt/convert_llama_nemo_to_hf.sh). A system
# message's content is ignored: the fixed sentence is always emitted.
LLMJP3_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + message['content'] }}"
    "{% elif message['role'] == 'system' %}{{ '以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。' }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:\\n' + message['content'] + eos_token }}"
    "{% endif %}{% if loop.last and add_generation_prompt %}{{ '\\n\\n### 応答:\\n' }}{% endif %}{% endfor %}"
)

# llm-jp-13b v1.1: the sentence once, then instruction/response blocks as in
# LLM-jp's own multi-turn code; no special tokens anywhere.
LLMJP_V11_TEMPLATE = (
    "{{ '以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:\\n' + message['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\\n\\n### 応答:\\n' }}{% endif %}"
)

# weblab-10b: the card's prompt ends at "応答:" with no newline, so the model
# writes its own line break. Earlier replies are written back exactly as they
# continued that prompt, so the model sees its own history unchanged.
WEBLAB_TEMPLATE = (
    "{{ '以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:' + message['content'] }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '\\n\\n### 応答:' }}{% endif %}"
)

# Base models: the conversation is one running text that the model continues.
COMPLETION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['content'] }}{% endif %}{% endfor %}"
)

TEMPLATES: dict[PromptFormat, str] = {
    PromptFormat.LLMJP3_CHAT: LLMJP3_TEMPLATE,
    PromptFormat.LLMJP_V11_ALPACA: LLMJP_V11_TEMPLATE,
    PromptFormat.WEBLAB_ALPACA: WEBLAB_TEMPLATE,
    PromptFormat.COMPLETION: COMPLETION_TEMPLATE,
}


def conversation(fmt: PromptFormat, history: Sequence[Message], user_message: str) -> list[Message]:
    """The messages to render for a new user turn, with the system turn the format wants."""
    messages: list[Message] = [m for m in history if m["role"] != "system"]
    messages.append({"role": "user", "content": user_message})
    if fmt is PromptFormat.LLMJP3_CHAT:
        # The model cards always send a system turn; its content is not used.
        messages.insert(0, {"role": "system", "content": SYSTEM_SENTENCE})
    return messages


def render(tokenizer: Any, fmt: PromptFormat, messages: Sequence[Message]) -> str:
    """Render messages to prompt text through the tokenizer's chat template mechanism."""
    own = getattr(tokenizer, "chat_template", None)
    # Only the llm-jp-3 format lives in tokenizers; the base llm-jp-3.1 model
    # shares that tokenizer yet must be prompted as plain completion.
    template = own if (fmt is PromptFormat.LLMJP3_CHAT and own) else TEMPLATES[fmt]
    return tokenizer.apply_chat_template(
        list(messages),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=fmt is not PromptFormat.COMPLETION,
    )


@dataclass(frozen=True)
class Prompt:
    """A conversation rendered and tokenised for one model, ready to generate from."""

    text: str
    ids: list[int]
    max_new_tokens: int
    """What the request asked for, lowered where the context has less room."""
    dropped_turns: int = 0
    """Oldest messages left out because the whole conversation did not fit."""


def _droppable(messages: Sequence[Message]) -> tuple[list[Message], list[Message], list[Message]]:
    """(system turns, earlier turns that may be dropped, the new user turn)."""
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    return system, rest[:-1], rest[-1:]


def prepare(
    tokenizer: Any, fmt: PromptFormat, messages: Sequence[Message], context: int, max_new_tokens: int
) -> Prompt:
    """Render and tokenise ``messages``, leaving out the oldest turns when they outgrow the context.

    The conversation must leave ``max_new_tokens`` of room in ``context``;
    where it does not, whole turns are dropped from the front, a user turn
    with the reply after it, so the prompt still alternates. The new message
    is never dropped: when it alone leaves too little room, the reply gets
    what room there is. Raises ``InvalidInput`` when there is none.
    """
    system, earlier, last = _droppable(messages)
    budget = context - max_new_tokens

    def attempt(dropped: int) -> Prompt:
        kept = [*system, *earlier[dropped:], *last]
        text = render(tokenizer, fmt, kept)
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return Prompt(text, ids, min(max_new_tokens, context - len(ids)), dropped)

    whole = attempt(0)
    if len(whole.ids) <= budget or not earlier:
        prompt = whole
    else:
        # Fewer turns never make a longer prompt, so the fewest drops that
        # fit are found by bisection: a handful of renders, not one per turn.
        starts = list(range(0, len(earlier) + 1, 2))  # drop in user/assistant pairs
        lo, hi = 1, len(starts) - 1
        prompt = attempt(starts[-1])
        while lo <= hi:
            mid = (lo + hi) // 2
            candidate = attempt(starts[mid])
            if len(candidate.ids) <= budget:
                prompt, hi = candidate, mid - 1
            else:
                lo = mid + 1
        if len(earlier) % 2 and len(prompt.ids) > budget:
            prompt = attempt(len(earlier))  # an odd history: its last reply may go too
    if prompt.max_new_tokens < 1:
        raise InvalidInput(
            "会話が長すぎます。チャットを消去してやり直してください。",
            "The conversation is too long for this model. Clear the chat and start again.",
        )
    return prompt
