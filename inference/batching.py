"""Continuous batching on one loaded model: requests join and leave a running batch between token steps.

Each loaded model has one ``Batcher``: a long-lived thread that owns the
model. Requests that arrive together are prefilled together (left-padded to
the longest prompt, in groups that waste little on padding), then join the
running batch, left-padded to the batch's length; finished or stopped rows
leave between steps. Newcomers are prefilled before the running rows take
their next step, including those that arrive during a prefill, so a first
token waits behind at most a batch's worth of prefills and never behind the
token steps of replies already streaming (the batch size bounds how long the
running rows can be held up). Every row keeps its own sampling options, its
own stop event and its own text stream, so one visitor's long reply never
holds up another's first token.

Prefill is bound by arithmetic on a CPU, so eight prompts prefilled at once
still cost far more than one; in one forward they cost about half of eight
forwards one after the other (BENCHMARKS.md, rows 7), and every one of them
gets its first token at the same moment instead of the last waiting for all
the others.

Why not transformers' own continuous batching
(``init_continuous_batching``), even on CUDA where it is built to shine: its
manager drops the repetition penalty
(``RepetitionPenaltyLogitsProcessor.supports_continuous_batching`` is False
in transformers 5), and every LLM-jp card samples with one (1.05 or 1.1); it
has no per-request seed, and sampling or greedy search is one setting for
all its requests. Nearly every chat would fall back to a solo path, so the
batch would hold little. This loop honours all of them per row. On this CPU
the manager was also no faster than one request at a time, while this loop
came close to one static batch, which cannot take newcomers (BENCHMARKS.md,
row 6).

A seeded request runs as a batch of one beside the others (its own rows,
stepped in turn): batch composition changes the floating-point sums slightly,
and a seed promises the same reply every time.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.kvcache import growing_cache
from inference.progress import FinishReason
from inference.sampling import SamplingOptions
from inference.streaming import IncrementalDecoder

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Request:
    """One reply to generate; the batcher fills in the outcome and sets ``done``."""

    ids: list[int]
    options: SamplingOptions
    max_new_tokens: int
    emit: Callable[[str], None]
    stop: threading.Event
    done: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    finish_reason: FinishReason = "length"
    error: BaseException | None = None

    @property
    def solo(self) -> bool:
        """Whether this request must be computed alone (see the module's note on seeds)."""
        return self.options.seed is not None and self.options.temperature > 0


class _Row:
    """A request inside a cohort: its decoder and sampler state."""

    def __init__(self, request: Request, tokenizer: Any) -> None:
        self.request = request
        self.decoder = IncrementalDecoder(tokenizer)
        self.generator: torch.Generator | None = None
        if request.solo:
            self.generator = torch.Generator().manual_seed(request.options.seed or 0)

    def finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        req = self.request
        if error is None and (text := self.decoder.flush()):
            req.emit(text)
        req.finish_reason, req.error = reason, error
        req.done.set()


class _Cohort:
    """Rows decoded together: one KV cache, left-padded to a common length."""

    def __init__(self, rows: list[_Row], cache: Any, mask: torch.Tensor, seen: torch.Tensor, last: torch.Tensor):
        self.rows = rows
        self.cache = cache
        self.mask = mask  # [rows, length]: 1 where the cache holds a real token
        self.seen = seen  # [rows, vocab]: tokens present so far, for the repetition penalty
        self.last = last  # [rows]: each row's newest token, not yet in the cache

    def merge(self, other: _Cohort) -> None:
        """Take ``other``'s rows into this cohort, left-padding the shorter cache."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, length, 2), _left_pad(theirs.keys, length, 2)])
            mine.values = torch.cat([_left_pad(mine.values, length, 2), _left_pad(theirs.values, length, 2)])
        self.mask = torch.cat([_left_pad(self.mask, length, 1), _left_pad(other.mask, length, 1)])
        self.seen = torch.cat([self.seen, other.seen])
        self.last = torch.cat([self.last, other.last])
        self.rows += other.rows

    def keep(self, keep: list[int]) -> None:
        """Keep only the rows at ``keep``, and drop padding columns that no row needs any more."""
        if not keep:
            self.rows = []
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.rows = [self.rows[i] for i in keep]
        self.mask, self.seen, self.last = self.mask[index], self.seen[index], self.last[index]
        unused = int(self.mask.cumsum(1).eq(0).all(0).sum())  # leading columns empty in every row
        self.mask = self.mask[:, unused:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, unused:]
            layer.values = layer.values[index, :, unused:]


def _left_pad(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    short = length - t.shape[dim]
    if short == 0:
        return t
    shape = list(t.shape)
    shape[dim] = short
    return torch.cat([t.new_zeros(shape), t], dim=dim)


# On a CPU the model's threads take every core, and the web layer shares them. At the same
# priority, with eight visitors chatting, a new message took 30-80 ms to reach the model
# instead of 15-25 alone; at this one, 17-34. The web layer needs a few percent of a core.
GENERATION_NICENESS = 10


def _yield_to_the_web_layer() -> None:
    """Lower the calling thread's priority, and so that of the compute threads it starts (Linux)."""
    if not sys.platform.startswith("linux"):  # elsewhere a thread id is not a ``setpriority`` target
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + GENERATION_NICENESS, 19))
    except OSError as exc:
        log.info("generation keeps the web layer's priority: %s", exc)


# A group prefilled together computes every prompt at the longest one's length:
# this bounds the share of that work spent on padding.
PADDING_WASTE = 0.25


def _groups(requests: list[Request]) -> list[list[Request]]:
    """Split requests that arrived together into groups to prefill in one forward each.

    A seeded sampled request is prefilled alone (see the module's note on
    seeds); the others go shortest first into groups whose padding stays
    under ``PADDING_WASTE`` of the work.
    """
    groups: list[list[Request]] = [[r] for r in requests if r.solo]
    group: list[Request] = []
    for request in sorted((r for r in requests if not r.solo), key=lambda r: len(r.ids)):
        real = sum(len(r.ids) for r in group) + len(request.ids)
        if group and len(request.ids) * (len(group) + 1) > real * (1 + PADDING_WASTE):
            groups.append(group)
            group = []
        group.append(request)
    return groups + ([group] if group else [])


def _penalise(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' repetition penalty, one factor per row."""
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def _filter(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-k then top-p (nucleus) filtering, as transformers' warpers do, one setting per row."""
    ordered, order = torch.sort(logits, descending=True)
    k = torch.where(top_k > 0, top_k, logits.shape[-1]).clamp(max=logits.shape[-1])
    kth = ordered.gather(1, (k - 1).unsqueeze(1))
    logits = logits.masked_fill(logits < kth, -float("inf"))
    ordered = ordered.masked_fill(ordered < kth, -float("inf"))
    # Keep the most likely tokens whose mass reaches top_p (and always the first).
    mass = ordered.softmax(-1).cumsum(-1)
    drop = (mass - ordered.softmax(-1)) >= top_p.unsqueeze(1)
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(1, order, drop), -float("inf"))


class Batcher:
    """Owns one model on one long-lived thread and generates every request for it, batched."""

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch: int = 8, name: str = "model", start: bool = True
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.eos = tokenizer.eos_token_id
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"generate-{name}", daemon=True)
        if start:
            self._thread.start()

    def run_alone(self, request: Request) -> None:
        """Generate ``request`` by itself on the calling thread (no batching thread)."""
        with torch.inference_mode():
            cohort = self._admit([request])
            while cohort is not None and cohort.rows:
                self._step(cohort)

    def submit(self, request: Request) -> None:
        """Queue ``request``; it joins the running batch at the next step."""
        self._inbox.put(request)

    def close(self) -> None:
        """End the thread once the requests in hand are done."""
        self._inbox.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    # -- the loop -----------------------------------------------------------

    def _run(self) -> None:
        if self.model.device.type == "cpu":
            _yield_to_the_web_layer()
        cohorts: list[_Cohort] = []
        closing = False
        with torch.inference_mode():
            while cohorts or not closing:
                # Prefill before stepping: requests that arrived while a prefill ran are
                # admitted before the running rows take their next step, so a first token
                # waits for at most a batch's worth of prefills, never behind decode steps.
                block = not cohorts
                while True:
                    active = sum(len(c.rows) for c in cohorts)
                    taken = self._take(block=block, room=self.max_batch - active)
                    block = False
                    closing = closing or None in taken
                    if not (newcomers := [r for r in taken if r is not None]):
                        break
                    self._join(cohorts, newcomers)
                for cohort in list(cohorts):
                    self._step(cohort)
                    if not cohort.rows:
                        cohorts.remove(cohort)

    def _join(self, cohorts: list[_Cohort], requests: list[Request]) -> None:
        """Prefill ``requests`` and add them to the running cohorts (a seeded one keeps its own)."""
        for group in _groups(requests):
            if (joined := self._admit(group)) is None:
                continue
            shared = next((c for c in cohorts if not c.rows[0].request.solo), None)
            if joined.rows[0].request.solo or shared is None:
                cohorts.append(joined)
            else:
                shared.merge(joined)

    def _take(self, *, block: bool, room: int) -> list[Request | None]:
        taken: list[Request | None] = []
        try:
            if block:
                taken.append(self._inbox.get())
            while len([r for r in taken if r is not None]) < max(room, 0):
                taken.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return taken

    def _fail(self, rows: list[_Row], exc: BaseException) -> None:
        for row in rows:
            row.finish("cancelled", exc)

    def _admit(self, requests: list[Request]) -> _Cohort | None:
        """Prefill ``requests`` together and sample their first tokens; a cohort, or None if all ended."""
        rows = []
        for request in requests:
            row = _Row(request, self.tokenizer)
            if request.stop.is_set():
                row.finish("cancelled")
            else:
                rows.append(row)
        if not rows:
            return None
        device = self.model.device
        length = max(len(r.request.ids) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos or 0
        ids = torch.tensor([[pad] * (length - len(r.request.ids)) + r.request.ids for r in rows], device=device)
        mask = torch.tensor(
            [[0] * (length - len(r.request.ids)) + [1] * len(r.request.ids) for r in rows], device=device
        )
        try:
            cache = growing_cache(self.model.config)
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(1) - 1).clamp(min=0),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except BaseException as exc:
            self._fail(rows, exc)
            return None
        if not bool(mask.all()):
            # What padding left in the cache is masked from every later step; zeroed, it
            # cannot turn into NaN there whatever the attention kernel does with it.
            hidden = ~mask.bool()[:, None, :, None]
            for layer in out.past_key_values.layers:
                layer.keys.masked_fill_(hidden, 0)
                layer.values.masked_fill_(hidden, 0)
        seen = torch.zeros((len(rows), out.logits.shape[-1]), dtype=torch.bool, device=device)
        real = mask.bool()
        which = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(ids)
        seen[which[real], ids[real]] = True
        cohort = _Cohort(rows, out.past_key_values, mask, seen, ids[:, -1])
        self._sample(cohort, out.logits[:, -1, :])
        return cohort if cohort.rows else None

    def _step(self, cohort: _Cohort) -> None:
        """One decoding step for every row of ``cohort``."""
        if stopped := [i for i, row in enumerate(cohort.rows) if row.request.stop.is_set()]:
            for i in stopped:
                cohort.rows[i].finish("cancelled")
            cohort.keep([i for i in range(len(cohort.rows)) if i not in stopped])
            if not cohort.rows:
                return
        mask = torch.cat([cohort.mask, cohort.mask.new_ones((len(cohort.rows), 1))], dim=1)
        positions = mask.sum(1, keepdim=True) - 1
        try:
            out = self.model(
                input_ids=cohort.last.unsqueeze(1),
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cohort.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        except BaseException as exc:
            self._fail(cohort.rows, exc)
            cohort.rows = []
            return
        cohort.mask = mask
        self._sample(cohort, out.logits[:, -1, :])

    def _sample(self, cohort: _Cohort, logits: torch.Tensor) -> None:
        """Pick each row's next token, stream it, and let finished rows leave."""
        rows = cohort.rows
        options = [r.request.options for r in rows]
        logits = logits.float()
        penalty = torch.tensor([[o.repetition_penalty] for o in options], device=logits.device)
        logits = _penalise(logits, cohort.seen, penalty)
        tokens = logits.argmax(-1)
        sampled = [i for i, o in enumerate(options) if o.temperature > 0]
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            temps = torch.tensor([[options[i].temperature] for i in sampled], device=logits.device)
            top_k = torch.tensor([options[i].top_k for i in sampled], device=logits.device)
            # top_p 1 keeps everything; as +inf it cannot drop a token to rounding in the cumulative sum.
            top_p = torch.tensor(
                [options[i].top_p if options[i].top_p < 1 else math.inf for i in sampled], device=logits.device
            )
            probs = _filter(logits[index] / temps, top_k, top_p).softmax(-1)
            for j, i in enumerate(sampled):
                tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
        cohort.seen[torch.arange(len(rows)), tokens] = True
        cohort.last = tokens
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(rows, tokens.tolist(), strict=True)):
            req = row.request
            if req.stop.is_set():
                row.finish("cancelled")
                continue
            req.completion_tokens += 1
            if token == self.eos:
                row.finish("stop")
                continue
            try:
                if text := row.decoder.push([token]):
                    req.emit(text)
            except BaseException as exc:  # the consumer's failure ends its own row only
                row.finish("cancelled", exc)
                continue
            if req.completion_tokens >= req.max_new_tokens:
                row.finish("length")
                continue
            keep.append(i)
        if len(keep) < len(rows):
            cohort.keep(keep)
