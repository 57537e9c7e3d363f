"""Continuous batching on one loaded model: requests join and leave a running batch between token steps.

Each loaded model has one ``Batcher``: a long-lived thread that owns the
model. Requests that arrive together are prefilled together (left-padded to
the longest prompt, in groups that waste little on padding), then join the
running batch, left-padded to the batch's length; finished or stopped rows
leave between steps. Newcomers are prefilled before the running rows take
their next step, including those that arrive during a prefill, so a first
token waits behind at most a batch's worth of prefills and never behind the
token steps of replies already streaming. Every row keeps its own sampling
options, its own stop event and its own text stream.

**Failure boundaries.** One visitor's request must never stop the model for
the others. Sampling is total (``inference.local.sampler``: a row without a defined
next token fails alone). A forward (prefill or step) that raises is rewound
and retried on halves of its rows, so a failure that one row causes ends
that row only; an out-of-memory fails the newest row and lowers the memory
budget; a failing decoder or consumer ends its own row. An error that says
the device itself is broken (a CUDA error) ends the loop: every request gets
the message and the model's owner reloads it. Whatever escapes anyway ends
the thread with every request answered; the owner's watchdog also watches
for a loop that stops making progress (``stalled``: past the deadline of
its current forward, which is set from the forwards measured so far).

**Memory.** Admission is bounded by a KV-cache budget in cache positions
(rows × the length each may reach, padding included); a request that does
not fit waits, and hears why.

Why not transformers' own continuous batching (``init_continuous_batching``):
its manager drops the repetition penalty every LLM-jp card samples with, has
no per-request seed, and greedy or sampling is one setting for all its
requests, so nearly every chat would fall back to a solo path (BENCHMARKS.md,
row 6). A seeded request runs as a batch of one beside the others: batch
composition changes floating-point sums slightly, and a seed promises the
same reply every time.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from inference.errors import GenerationFailed, OutOfMemory
from inference.local.cohort import Cohort
from inference.local.decoder import IncrementalDecoder
from inference.local.kvcache import cache_argument, growing_cache
from inference.local.sampler import FAILED, RowOptions, sample
from inference.progress import FinishReason, Status, WaitingForMemory
from inference.sampling import SamplingOptions

log = logging.getLogger(__name__)

FAIR_SHARE_TOKENS = 128
"""A reply asked to make room for waiting visitors ends once it has at least this many tokens."""


def _ignore(_: Status) -> None:
    pass


def generation_failed() -> GenerationFailed:
    """The message of a reply that failed for a reason the visitor cannot act on but to try again."""
    return GenerationFailed("生成に失敗しました。もう一度お試しください。", "Generation failed. Please try again.")


@dataclass(eq=False)
class Request:
    """One reply to generate; whoever ends it first (the batcher, or a watchdog) fills in the outcome."""

    ids: list[int]
    options: SamplingOptions
    max_new_tokens: int
    emit: Callable[[str], None]
    stop: threading.Event
    report: Callable[[Status], None] = _ignore
    make_room: threading.Event = field(default_factory=threading.Event)
    """Set when visitors wait for a place: the reply ends early, at ``FAIR_SHARE_TOKENS`` or more."""
    done: threading.Event = field(default_factory=threading.Event)
    completion_tokens: int = 0
    finish_reason: FinishReason = "length"
    error: BaseException | None = None
    told_to_wait: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def solo(self) -> bool:
        """Whether this request must be computed alone (see the module's note on seeds)."""
        return self.options.seed is not None and self.options.temperature > 0

    @property
    def reach(self) -> int:
        """Cache positions this request may come to hold."""
        return len(self.ids) + self.max_new_tokens

    def send(self, text: str) -> None:
        """Pass text to the consumer, unless the request has already ended."""
        with self._lock:
            if not self.done.is_set():
                self.emit(text)

    def finish(self, reason: FinishReason, error: BaseException | None = None) -> bool:
        """End the request once; False when it had already ended."""
        with self._lock:
            if self.done.is_set():
                return False
            self.finish_reason, self.error = reason, error
            self.done.set()
            return True


class _Row:
    """A request inside a cohort, with its decoder."""

    def __init__(self, request: Request, tokenizer: Any) -> None:
        self.request = request
        self.decoder = IncrementalDecoder(tokenizer)

    def finish(self, reason: FinishReason, error: BaseException | None = None) -> None:
        req = self.request
        if error is None:
            try:
                if text := self.decoder.flush():
                    req.send(text)
            except Exception as exc:  # a decoder or consumer failing at the end fails this row only
                error = _unexpected(exc, "finishing a reply")
        req.finish(reason, error)


class DeviceBroken(Exception):
    """The device reported an error after which nothing computed on it can be trusted."""


def is_device_broken(exc: BaseException) -> bool:
    """Whether ``exc`` leaves the device unusable (a CUDA error, a device-side assert), not just this batch."""
    if isinstance(exc, DeviceBroken) or type(exc).__name__ == "AcceleratorError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("CUDA error", "device-side assert", "CUBLAS_STATUS", "illegal memory access")
    )


def _reraise_fatal(exc: BaseException) -> None:
    """Let what no row boundary may swallow end the loop: a broken device, an interrupt, an exit."""
    if is_device_broken(exc):
        raise DeviceBroken(str(exc)) from exc
    if not isinstance(exc, Exception):
        raise exc


def _unexpected(exc: BaseException, doing: str) -> GenerationFailed:
    """Log an unexpected error once, with its traceback, and turn it into the visitor's message."""
    log.error("generation failed while %s", doing, exc_info=exc)
    return generation_failed()


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


def _cells(cohorts: list[Cohort], joining: list[Request]) -> int:
    """Cache positions the cohorts may come to hold with ``joining`` added to the shared one."""
    total, shared = 0, [r.request for c in cohorts if not c.solo for r in c.rows]
    for cohort in cohorts:
        if cohort.solo:
            total += cohort.rows[0].request.reach
    everyone = shared + [r for r in joining if not r.solo]
    if everyone:
        total += len(everyone) * max(r.reach for r in everyone)
    return total + sum(r.reach for r in joining if r.solo)


class Batcher:
    """Owns one model on one long-lived thread and generates every request for it, batched."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 8,
        name: str = "model",
        start: bool = True,
        kv_budget: int | None = None,
        stall_s: float = 60.0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.name = name
        self.kv_budget = kv_budget
        """Cache positions (rows × length) all requests together may hold; None: unbounded."""
        self.eos = tokenizer.eos_token_id
        self._cache_arg = cache_argument(model)
        self._inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._waiting: collections.deque[Request] = collections.deque()  # taken in, not yet prefilled
        self._lock = threading.Lock()
        self._requests: set[Request] = set()
        self.stall_s = stall_s
        self.progress_at = time.monotonic()
        """When the loop last finished a unit of work, or began to wait for some."""
        self.busy = False
        """Whether the loop has requests in hand (an idle loop makes no progress and is not stalled)."""
        self._deadline = math.inf
        self._per_position: float | None = None  # seconds a forward takes per cache position it computes
        self.failure: BaseException | None = None
        """What ended the loop, when something did."""
        self._retired = False
        self._thread = threading.Thread(target=self._run, name=f"generate-{name}", daemon=True)
        if start:
            self._thread.start()

    # -- the owner's side ---------------------------------------------------------

    def run_alone(self, request: Request) -> None:
        """Generate ``request`` by itself on the calling thread (no batching thread)."""
        with torch.inference_mode():
            cohorts = self._prefill([request])
            while cohorts:
                cohorts = [c for cohort in cohorts for c in self._step(cohort)]

    def submit(self, request: Request) -> None:
        """Queue ``request``; it joins the running batch at the next step."""
        with self._lock:
            if self._retired:
                request.finish("cancelled", generation_failed())
                return
            self._requests.add(request)
        self._inbox.put(request)

    def close(self) -> None:
        """End the thread once the requests in hand are done."""
        self._inbox.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def abandon(self, error: BaseException) -> int:
        """Answer every request in hand with ``error`` and retire the loop (a watchdog's last resort).

        A loop stuck in a forward may wake later: it then finds itself
        retired and its requests ended, and leaves without a word to them.
        """
        with self._lock:
            self._retired = True
            requests, self._requests = list(self._requests), set()
        self._inbox.put(None)
        return sum(r.finish("cancelled", error) for r in requests)

    def stalled(self) -> bool:
        """Whether the loop has requests in hand and is past the deadline of what it is doing."""
        return self.busy and time.monotonic() > self._deadline

    def _expect(self, positions: int) -> None:
        """Set the deadline of a forward over ``positions`` cache positions: ``stall_s`` past what it should take.

        What it should take comes from the forwards measured so far, so a long
        prefill on a CPU is not mistaken for a stuck loop; before any is
        measured, ten times ``stall_s`` stands in.
        """
        expected = positions * self._per_position if self._per_position is not None else 9 * self.stall_s
        self._deadline = time.monotonic() + self.stall_s + 4 * expected

    def _measured(self, positions: int, started: float) -> None:
        now = time.monotonic()
        per = (now - started) / max(positions, 1)
        self._per_position = per if self._per_position is None else 0.8 * self._per_position + 0.2 * per
        self.progress_at, self._deadline = now, now + self.stall_s

    # -- the loop -----------------------------------------------------------------

    def _run(self) -> None:
        if self.model.device.type == "cpu":
            _yield_to_the_web_layer()
        try:
            with torch.inference_mode():
                self._loop()
        except BaseException as exc:  # the boundary of last resort: nothing in hand is left waiting
            self.failure = exc
            if isinstance(exc, DeviceBroken):
                log.error("%s: the device failed; its requests are ended and the model is reloaded", self.name)
                error: BaseException = generation_failed()
            else:
                error = _unexpected(exc, f"running {self.name}'s loop")
            self.abandon(error)

    def _loop(self) -> None:
        cohorts: list[Cohort] = []
        closing = False
        while not self._retired and (cohorts or self._waiting or not closing):
            # Prefill before stepping: requests that arrived while a prefill ran are admitted
            # before the running rows take their next step, so a first token waits for at
            # most a batch's worth of prefills, never behind decode steps.
            block = not cohorts and not self._waiting
            while True:
                self.busy = not block
                taken = self._take(block=block, room=self.max_batch - sum(len(c.rows) for c in cohorts))
                self.busy, self.progress_at, block = True, time.monotonic(), False
                self._deadline = self.progress_at + self.stall_s
                closing = closing or None in taken
                self._waiting.extend(r for r in taken if r is not None)
                if not (newcomers := self._fitting(cohorts)):
                    break
                self._join(cohorts, newcomers)
            for cohort in list(cohorts):
                cohorts.remove(cohort)
                cohorts += self._step(cohort)
            self._forget()
        self.busy = False

    def _take(self, *, block: bool, room: int) -> list[Request | None]:
        taken: list[Request | None] = []
        room -= len(self._waiting)
        try:
            if block:
                taken.append(self._inbox.get())
            while len([r for r in taken if r is not None]) < max(room, 0):
                taken.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        return taken

    def _fitting(self, cohorts: list[Cohort]) -> list[Request]:
        """The waiting requests, in order, that the memory budget admits now (one always, when nothing runs)."""
        fits: list[Request] = []
        while self._waiting:
            request = self._waiting[0]
            if request.done.is_set() or request.stop.is_set():
                self._waiting.popleft()
                _Row(request, self.tokenizer).finish("cancelled")
                continue
            alone = not cohorts and not fits
            if not alone and self.kv_budget is not None and _cells(cohorts, [*fits, request]) > self.kv_budget:
                for place, r in enumerate(self._waiting, 1):
                    if not r.told_to_wait:
                        r.told_to_wait = True
                        r.report(WaitingForMemory(place))
                break
            fits.append(self._waiting.popleft())
        return fits

    def _forget(self) -> None:
        with self._lock:
            self._requests = {r for r in self._requests if not r.done.is_set()}

    def _join(self, cohorts: list[Cohort], requests: list[Request]) -> None:
        """Prefill ``requests`` and add them to the running cohorts (a seeded one keeps its own)."""
        for group in _groups(requests):
            for joined in self._prefill(group):
                shared = next((c for c in cohorts if not c.solo), None)
                if joined.solo or shared is None:
                    cohorts.append(joined)
                else:
                    shared.merge(joined)

    def _admit(self, requests: list[Request]) -> Cohort | None:
        """Prefill ``requests`` into one cohort (what ``_prefill`` keeps apart is merged); None if all ended."""
        cohorts = self._prefill(requests)
        for other in cohorts[1:]:
            cohorts[0].merge(other)
        return cohorts[0] if cohorts else None

    def _prefill(self, requests: list[Request]) -> list[Cohort]:
        """Prefill ``requests`` together and pick their first tokens; a failure is narrowed to its rows."""
        rows = []
        for request in requests:
            row = _Row(request, self.tokenizer)
            if request.stop.is_set() or request.done.is_set():
                row.finish("cancelled")
            else:
                rows.append(row)
        if not rows:
            return []
        try:
            cohort, logits = self._prefill_forward(rows)
        except BaseException as exc:
            _reraise_fatal(exc)
            if isinstance(exc, torch.OutOfMemoryError):
                self._free()
            if len(rows) == 1:
                rows[0].finish("cancelled", self._failure(exc, "prefilling"))
                return []
            half = len(rows) // 2
            return self._prefill([r.request for r in rows[:half]]) + self._prefill([r.request for r in rows[half:]])
        self._advance(cohort, logits)
        return [cohort] if cohort.rows else []

    def _prefill_forward(self, rows: list[_Row]) -> tuple[Cohort, torch.Tensor]:
        device = self.model.device
        length = max(len(r.request.ids) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos or 0
        ids = torch.tensor([[pad] * (length - len(r.request.ids)) + r.request.ids for r in rows], device=device)
        mask = torch.tensor(
            [[0] * (length - len(r.request.ids)) + [1] * len(r.request.ids) for r in rows], device=device
        )
        cache = growing_cache(self.model.config)
        started = time.monotonic()
        self._expect(ids.numel())
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        self._measured(ids.numel(), started)
        if not bool(mask.all()):
            # What padding left in the cache is masked from every later step; zeroed, it
            # cannot turn into NaN there whatever the attention kernel does with it.
            from transformers.cache_utils import CacheLayerMixin

            hidden = ~mask.bool()[:, None, :, None]
            for layer in cache.layers:
                # Layers that hold no attention keys (recurrent or cache-less ones) have nothing to zero.
                if isinstance(layer, CacheLayerMixin) and layer.keys is not None and layer.values is not None:
                    layer.keys.masked_fill_(hidden, 0)
                    layer.values.masked_fill_(hidden, 0)
        logits = out.logits[:, -1, :]
        seen = torch.zeros((len(rows), logits.shape[-1]), dtype=torch.bool, device=device)
        real = mask.bool()
        which = torch.arange(len(rows), device=device).unsqueeze(1).expand_as(ids)
        seen[which[real], ids[real]] = True
        options = RowOptions.of([r.request.options for r in rows], device)
        return Cohort(rows, cache, mask, seen, ids[:, -1], options), logits

    def _step(self, cohort: Cohort) -> list[Cohort]:
        """One decoding step for every row of ``cohort``; the cohorts that go on (a failure may split it)."""
        cohort.keep([i for i, row in enumerate(cohort.rows) if not self._ended(row)])
        if not cohort.rows:
            return []
        mask = torch.cat([cohort.mask, cohort.mask.new_ones((len(cohort.rows), 1))], dim=1)
        marks = cohort.mark()
        started = time.monotonic()
        self._expect(len(cohort.rows))
        try:
            out = self.model(
                input_ids=cohort.last.unsqueeze(1),
                attention_mask=mask,
                position_ids=mask.sum(1, keepdim=True) - 1,
                use_cache=True,
                logits_to_keep=1,
                **{self._cache_arg: cohort.cache},
            )
        except BaseException as exc:
            cohort.rewind(marks)
            return self._recover(cohort, exc)
        self._measured(len(cohort.rows), started)
        cohort.mask = mask
        self._advance(cohort, out.logits[:, -1, :])
        return [cohort] if cohort.rows else []

    def _ended(self, row: _Row) -> bool:
        if row.request.done.is_set():
            return True
        if row.request.stop.is_set():
            row.finish("cancelled")
            return True
        return False

    def _recover(self, cohort: Cohort, exc: BaseException) -> list[Cohort]:
        """After a failed step: fail the rows at fault, keep the others to be stepped again."""
        _reraise_fatal(exc)
        if isinstance(exc, torch.OutOfMemoryError):
            # The newest row leaves; the budget shrinks to what the others hold, so none joins until room is made.
            self._free()
            newest = len(cohort.rows) - 1
            cohort.rows[newest].finish("cancelled", OutOfMemory())
            log.warning("%s: out of memory at %d rows; the newest reply ended", self.name, len(cohort.rows))
            cohort.keep(list(range(newest)))
            self.kv_budget = min(self.kv_budget or sys.maxsize, max(cohort.cells(), 1))
            return [cohort] if cohort.rows else []
        if len(cohort.rows) == 1:
            cohort.rows[0].finish("cancelled", self._failure(exc, "stepping"))
            return []
        # Halves are stepped apart: a failure one row causes narrows down to that row.
        other = cohort.split(list(range(len(cohort.rows) // 2, len(cohort.rows))))
        return [cohort, other]

    def _failure(self, exc: BaseException, doing: str) -> BaseException:
        return OutOfMemory() if isinstance(exc, torch.OutOfMemoryError) else _unexpected(exc, doing)

    @staticmethod
    def _free() -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _advance(self, cohort: Cohort, logits: torch.Tensor) -> None:
        """Pick each row's next token, stream it, and let finished rows leave (one host sync)."""
        tokens = self._pick(cohort, logits)
        cohort.last = tokens.clamp(min=0)
        if cohort.options.penalising:
            cohort.seen[torch.arange(len(cohort.rows), device=tokens.device), cohort.last] = True
        keep: list[int] = []
        for i, (row, token) in enumerate(zip(cohort.rows, tokens.tolist(), strict=True)):
            if self._emit(row, token):
                keep.append(i)
        cohort.keep(keep)

    def _pick(self, cohort: Cohort, logits: torch.Tensor) -> torch.Tensor:
        try:
            return sample(logits, cohort.seen, cohort.options)
        except Exception as exc:  # not expected: sampling is total; fall back to one row at a time
            log.error("batched sampling failed; sampling row by row", exc_info=exc)
        tokens = []
        for i in range(len(cohort.rows)):
            one = cohort.options.select(torch.tensor([i], device=logits.device))
            try:
                tokens.append(int(sample(logits[i : i + 1], cohort.seen[i : i + 1], one)[0]))
            except Exception:
                tokens.append(FAILED)
        cohort.options.step += 1
        return torch.tensor(tokens, device=logits.device)

    def _emit(self, row: _Row, token: int) -> bool:
        """Hand one token to its row; whether the row goes on."""
        req = row.request
        if self._ended(row):
            return False
        if token == FAILED:
            log.warning("%s: a reply had no valid next token (NaN or no candidate left); it alone ends", self.name)
            row.finish("cancelled", generation_failed())
            return False
        req.completion_tokens += 1
        if token == self.eos:
            row.finish("stop")
            return False
        try:
            if text := row.decoder.push([token]):
                req.send(text)
        except Exception as exc:  # the decoder's or the consumer's failure ends its own row only
            row.finish("cancelled", _unexpected(exc, "streaming a reply"))
            return False
        if req.completion_tokens >= req.max_new_tokens:
            row.finish("length")
            return False
        if req.make_room.is_set() and req.completion_tokens >= FAIR_SHARE_TOKENS:
            row.finish("shared")
            return False
        return True
