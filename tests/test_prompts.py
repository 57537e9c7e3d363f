"""Prompt rendering: byte-exact for each family, through the chat template mechanism."""

from __future__ import annotations

import pytest

from inference.local.tiny import tiny_tokenizer
from inference.prompts import LLMJP3_TEMPLATE, PromptFormat, conversation, render

SENTENCE = "以下は、タスクを説明する指示です。要求を適切に満たす応答を書きなさい。"
HISTORY = [
    {"role": "user", "content": "自然言語処理とは何か"},
    {"role": "assistant", "content": "人間の言葉を計算機で扱う技術です。"},
]

# The template exactly as MODELS.md quotes it from the llm-jp-3 tokenizers.
MODELS_MD_TEMPLATE = (
    "{{bos_token}}{% for message in messages %}{% if message['role'] == 'user' %}{{ '\\n\\n### 指示:\\n' + "
    "message['content'] }}{% elif message['role'] == 'system' %}{{ '以下は、タスクを説明する指示です。要求を適切に満たす"
    "応答を書きなさい。' }}{% elif message['role'] == 'assistant' %}{{ '\\n\\n### 応答:\\n' + message['content'] + "
    "eos_token }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '\\n\\n### 応答:\\n' }}{% endif %}"
    "{% endfor %}"
)


def test_llmjp3_template_is_the_tokenizers_own() -> None:
    assert LLMJP3_TEMPLATE == MODELS_MD_TEMPLATE


CASES = [
    (
        PromptFormat.LLMJP3_CHAT,
        [],
        "富士山について教えて",
        f"<s>{SENTENCE}\n\n### 指示:\n富士山について教えて\n\n### 応答:\n",
    ),
    (
        PromptFormat.LLMJP3_CHAT,
        HISTORY,
        "例を挙げて",
        f"<s>{SENTENCE}\n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n人間の言葉を計算機で扱う技術です。</s>"
        "\n\n### 指示:\n例を挙げて\n\n### 応答:\n",
    ),
    (
        PromptFormat.LLMJP_V11_ALPACA,
        [],
        "自然言語処理とは何か",
        f"{SENTENCE}\n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n",
    ),
    (
        PromptFormat.LLMJP_V11_ALPACA,
        HISTORY,
        "例を挙げて",
        f"{SENTENCE}\n\n### 指示:\n自然言語処理とは何か\n\n### 応答:\n人間の言葉を計算機で扱う技術です。"
        "\n\n### 指示:\n例を挙げて\n\n### 応答:\n",
    ),
    (
        PromptFormat.WEBLAB_ALPACA,
        [],
        "大規模言語モデルについて説明してください。",
        f"{SENTENCE}\n\n### 指示:\n大規模言語モデルについて説明してください。\n\n### 応答:",
    ),
    (
        PromptFormat.WEBLAB_ALPACA,
        [{"role": "user", "content": "こんにちは"}, {"role": "assistant", "content": "\nはい"}],
        "続けて",
        f"{SENTENCE}\n\n### 指示:\nこんにちは\n\n### 応答:\nはい\n\n### 指示:\n続けて\n\n### 応答:",
    ),
    (PromptFormat.COMPLETION, [], "自然言語処理とは", "自然言語処理とは"),
    (
        PromptFormat.COMPLETION,
        [{"role": "user", "content": "昔々、"}, {"role": "assistant", "content": "あるところに"}],
        "おじいさんと",
        "昔々、あるところにおじいさんと",
    ),
]


@pytest.mark.parametrize(("fmt", "history", "message", "expected"), CASES)
def test_render_byte_exact(fmt: PromptFormat, history: list, message: str, expected: str) -> None:
    tok = tiny_tokenizer()  # has no chat template: the registry supplies one
    assert tok.chat_template is None
    text = render(tok, fmt, conversation(fmt, history, message))
    assert text.encode() == expected.encode()


@pytest.mark.parametrize(("fmt", "history", "message", "expected"), CASES)
def test_render_with_real_tokenizers(
    real_tokenizers: dict, fmt: PromptFormat, history: list, message: str, expected: str
) -> None:
    """With the real vocabularies, and the llm-jp-3 template carried by the tokenizer itself."""
    tok = real_tokenizers["ver2.1" if fmt is PromptFormat.LLMJP_V11_ALPACA else "ver3.0"]
    tok.chat_template = MODELS_MD_TEMPLATE if fmt is PromptFormat.LLMJP3_CHAT else None
    try:
        text = render(tok, fmt, conversation(fmt, history, message))
    finally:
        tok.chat_template = None
    assert text == expected
    ids = tok(text, add_special_tokens=False).input_ids
    if fmt is PromptFormat.LLMJP3_CHAT:
        # Exactly one BOS, written by the template; the EOS of earlier replies is a real EOS token.
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert ids.count(tok.eos_token_id) == sum(m["role"] == "assistant" for m in history)
    else:
        assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


def test_base_model_ignores_a_template_in_its_tokenizer() -> None:
    tok = tiny_tokenizer()
    tok.chat_template = MODELS_MD_TEMPLATE  # the base model shares the instruct tokenizer
    assert (
        render(tok, PromptFormat.COMPLETION, conversation(PromptFormat.COMPLETION, [], "日本の首都は"))
        == "日本の首都は"
    )
