"""Turning generated token ids into text chunks as they arrive.

transformers' ``TextIteratorStreamer`` flushes only at spaces, newlines and
CJK ideographs, so a run of kana waits until the next kanji, and it drops a
leading space after each newline. This decoder emits every character as soon
as the bytes that make it are complete, and never emits half a character: a
byte-fallback sequence is held until it decodes cleanly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REPLACEMENT = "\ufffd"
# A UTF-8 character is at most four bytes, so at most four byte-fallback
# tokens can be pending; past that the bytes are invalid, not incomplete.
_MAX_PENDING = 4


class IncrementalDecoder:
    """Decode a growing id sequence into exact, whole-character deltas.

    Decoding a short window that starts one step back (rather than the whole
    reply) keeps each step O(1), and diffing two decodes of the same window
    keeps SentencePiece's leading-space handling consistent, so the deltas join
    to exactly ``tokenizer.decode(ids, skip_special_tokens=True)`` for valid
    text. Bytes that can never form a character are dropped, never shown as
    U+FFFD.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the window that is re-decoded
        self._read = 0  # end of what has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, ids: Iterable[int]) -> str:
        """Add newly generated ids; return the text they complete (maybe empty)."""
        self._ids.extend(ids)
        return self._advance(final=False)

    def flush(self) -> str:
        """Return whatever is still held once generation has ended."""
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        settled = self._decode(self._ids[self._prefix : self._read])
        current = self._decode(self._ids[self._prefix :])
        pending = len(self._ids) - self._read
        if current.endswith(REPLACEMENT) and not final and pending < _MAX_PENDING:
            return ""  # an incomplete character: wait for its remaining bytes
        if not current.startswith(settled):
            # Cannot happen for SentencePiece or byte-level BPE decoders; fall
            # back to a fresh window rather than emit a wrong delta.
            settled = ""
            current = self._decode(self._ids[self._read :])
        self._prefix, self._read = self._read, len(self._ids)
        return current[len(settled) :].replace(REPLACEMENT, "")
