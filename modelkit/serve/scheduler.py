"""The scheduler: one thread owns the model, admits queued sequences into the running batch
between decoding steps, and streams each sequence's tokens back to its request.

Requests hand in :class:`Choice` objects (one per completion choice: a prompt's ids and its
options) and read what happens to each through its ``sink`` callback: a ``("prompt", ...)``
item once the prompt is read, ``("token", ...)`` items, then ``("end", ...)`` or
``("error", message)``. Stop strings are applied here (text past one is never sent); a
cancelled choice (its client went away) leaves the batch at the next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ModelkitError
from ..generation.stop import StopStrings
from ..text.decoding import IncrementalDecoder
from .engine import Decoder, TokenEvent, default_decoder
from .logprobs import prompt_logprobs
from .prefix_cache import PrefixCache

if TYPE_CHECKING:
    from ..model import Model

log = logging.getLogger("modelkit.serve")
Sink = Callable[[tuple], None]
# the decoder the scheduler drives: swap in the library's batched decoder here
DecoderFactory = Callable[["Model", int], Decoder]


class QueueFull(Exception):
    """The waiting queue holds ``queue_size`` sequences already (HTTP 429)."""


class ShuttingDown(Exception):
    """The server is stopping and takes no new work (HTTP 503)."""


@dataclass
class Choice:
    """One sequence to generate. ``options`` go to :meth:`Decoder.add` (max_new_tokens,
    sampling, stop_ids, logprobs); ``echo_k`` (not None) asks for the prompt's own
    log-probabilities with that many alternatives; ``text`` is the rendered chat the ids encode,
    which keys the prefix cache's text matches."""

    prompt_ids: list[int]
    options: dict[str, Any]
    sink: Sink
    stop_strings: list[str] = field(default_factory=list)
    echo_k: int | None = None
    text: str | None = None
    cancelled: bool = False
    # filled in by the scheduler
    seq_id: int | None = None
    tokens: int = 0
    decoder: IncrementalDecoder | None = None
    matcher: StopStrings | None = None

    def cancel(self) -> None:
        """Leave the batch at the next step (the client is gone)."""
        self.cancelled = True

    def send(self, item: tuple) -> None:
        """Hand ``item`` to the request; a request whose event loop is gone is cancelled."""
        try:
            self.sink(item)
        except RuntimeError:  # the loop closed (the server is stopping)
            self.cancelled = True


@dataclass
class _Job:
    """A choice ready to join: the prompt ids left to read, the cache they continue (None: a
    new one), how many ids a cached prefix covered and the echo already read, its echo."""

    choice: Choice
    rest: list[int]
    cache: Any
    cached: int
    read: int
    prompt_info: Any


class Scheduler:
    """Owns ``model`` on its own thread. ``submit`` queues choices (all or none);
    ``stop`` finishes or cancels what is in flight and ends the thread."""

    def __init__(self, model: Model, *, max_batch: int = 16, queue_size: int = 64,
                 prefix_cache: PrefixCache | None = None,
                 decoder_factory: DecoderFactory = default_decoder):
        self.model = model
        self.max_batch = max_batch
        self.queue_size = queue_size
        self.prefix_cache = prefix_cache or PrefixCache(0)
        self.decoder = decoder_factory(model, max_batch)
        self._waiting: deque[Choice] = deque()
        self._running: dict[int, Choice] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self.prefilled_tokens = 0  # tokens run through the model to read prompts
        self.generated_tokens = 0
        self.steps = 0
        self.prefills = 0  # prefills run: each reads the prompts admitted in one turn together
        self.largest_prefill = 0  # the most prompts one prefill read
        self._thread = threading.Thread(target=self._loop, name="modelkit-scheduler", daemon=True)

    # ---- the request side --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, choices: list[Choice]) -> None:
        """Queue ``choices``; raises :class:`QueueFull` or :class:`ShuttingDown` (nothing queued)."""
        with self._wake:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) + len(choices) > self.queue_size:
                raise QueueFull(f"the server's queue is full ({self.queue_size} waiting sequences); "
                                f"retry later")
            self._waiting.extend(choices)
            self._wake.notify()

    def stats(self) -> dict[str, Any]:
        """What /health and /metrics report."""
        with self._wake:
            waiting, running = len(self._waiting), len(self._running)
        return {"running": running, "waiting": waiting, "max_batch": self.max_batch,
                "queue_size": self.queue_size, "prefilled_tokens": self.prefilled_tokens,
                "generated_tokens": self.generated_tokens, "steps": self.steps, "prefills": self.prefills,
                "largest_prefill": self.largest_prefill,
                "prefix_cache": self.prefix_cache.stats()}

    def stop(self, timeout: float = 0.0) -> None:
        """Take no new work; let running sequences finish for up to ``timeout`` seconds, then
        cancel the rest (their clients get an ``end`` with finish_reason "cancelled")."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            with self._wake:
                if not self._running and not self._waiting:
                    break
            time.sleep(0.02)
        with self._wake:
            for choice in list(self._waiting) + list(self._running.values()):
                choice.cancel()
            self._wake.notify()
        self._thread.join(timeout=30)

    # ---- the model side ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._running and not self._stopping:
                    self._wake.wait()
                if self._stopping and not self._waiting and not self._running:
                    return
                admit = []
                while self._waiting and len(self._running) + len(admit) < self.max_batch:
                    admit.append(self._waiting.popleft())
            try:
                self._admit_all(admit)
                self._drop_cancelled()
                if self._running:
                    self._step()
            except Exception:  # noqa: BLE001 - a bug must not stop the thread that serves everyone
                log.exception("the scheduler failed; ending the running sequences")
                for seq_id, choice in list(self._running.items()):
                    choice.send(("error", "internal error in the scheduler"))
                    self._running.pop(seq_id, None)
                    self.decoder.remove(seq_id)

    def _admit_all(self, choices: list[Choice]) -> None:
        """Admit the choices taken from the queue in one turn: their prompts are read together,
        in one batched prefill (the weights read once for all of them, not once a prompt). When
        that fails (a prompt or its options refused, memory short), each is admitted on its own,
        so only the failing one hears of it."""
        ready = [job for choice in choices if (job := self._guarded(choice, self._prepare))]
        if len(ready) > 1 and hasattr(self.decoder, "add_many"):
            try:
                seq_ids = self.decoder.add_many([job.rest for job in ready], [job.cache for job in ready],
                                                [job.choice.options for job in ready])
            except ModelkitError:
                seq_ids = None
            if seq_ids is not None:
                self._counted(len(ready))
                for job, seq_id in zip(ready, seq_ids):
                    self._join(job, seq_id)
                return
            # from the start: the failed prefill may have extended their caches
            ready = [job for old in ready if (job := self._guarded(old.choice, self._prepare))]
        for job in ready:
            self._guarded(job.choice, self._add_one, job)

    def _guarded(self, choice: Choice, action: Callable[..., Any], *args: Any) -> Any:
        """``action(choice, *args)``; an error is the choice's answer (None returned), never the
        scheduler's end."""
        try:
            return action(choice, *args)
        except ModelkitError as exc:
            choice.send(("error", str(exc).splitlines()[0]))
        except Exception as exc:  # noqa: BLE001 - a bug must not end the thread that serves everyone
            log.exception("prefill failed")
            choice.send(("error", f"internal error while reading the prompt ({type(exc).__name__})"))
        return None

    def _prepare(self, choice: Choice) -> _Job | None:
        """What is left of the prompt to read (after a cached prefix) and the cache it continues,
        or None when the choice is answered at once (cancelled, or only its echo asked)."""
        if choice.cancelled:
            choice.send(("end", "cancelled", 0))
            return None
        model, ids = self.model, choice.prompt_ids
        prompt_info = None
        cached = read = 0
        if choice.echo_k is not None:  # every prompt position's logits: no prefix to skip
            cache = model.make_cache()
            prompt_info = prompt_logprobs(model, ids, choice.echo_k, cache)
            read = len(ids) - 1
            rest = ids[-1:]
        else:
            hit = self.prefix_cache.lookup(ids)
            cache = hit[1] if hit else None
            cached = len(hit[0]) if hit else 0
            rest = ids[cached:]
        choice.decoder = IncrementalDecoder(model.tokenizer, context=ids[-8:])
        choice.matcher = StopStrings(choice.stop_strings) if choice.stop_strings else None
        if choice.options.get("max_new_tokens", 16) == 0:  # only the prompt's log-probabilities (echo)
            self.prefilled_tokens += read
            choice.send(("prompt", prompt_info, cached))
            choice.send(("end", "length", 0))
            return None
        return _Job(choice, rest, cache, cached, read, prompt_info)

    def _add_one(self, choice: Choice, job: _Job) -> None:
        """Read one prompt on its own and join the batch."""
        seq_id = self.decoder.add(job.rest, cache=job.cache, **choice.options)
        self._counted(1)
        self._join(job, seq_id)

    def _counted(self, prompts: int) -> None:
        self.prefills += 1
        self.largest_prefill = max(self.largest_prefill, prompts)

    def _join(self, job: _Job, seq_id: int) -> None:
        """The prompt is read: the choice runs in the batch from the next step."""
        choice = job.choice
        self.prefilled_tokens += job.read + len(job.rest)
        choice.seq_id = seq_id
        self._running[seq_id] = choice
        if choice.echo_k is None:
            self.prefix_cache.store(self.decoder.cache_of(seq_id), choice.text)
        choice.send(("prompt", job.prompt_info, job.cached))

    def _drop_cancelled(self) -> None:
        for seq_id, choice in list(self._running.items()):
            if choice.cancelled:
                self._finish(seq_id, "cancelled", keep=False)

    def _step(self) -> None:
        try:
            events = self.decoder.step()
        except ModelkitError as exc:
            message = str(exc).splitlines()[0]
            for seq_id, choice in list(self._running.items()):
                choice.send(("error", message))
                self._finish(seq_id, None, keep=False, notify=False)
            return
        self.steps += 1
        for event in events:
            choice = self._running.get(event.seq_id)
            if choice is not None:
                self._deliver(choice, event)

    def _deliver(self, choice: Choice, event: TokenEvent) -> None:
        """Turn one token into text for the client; a stop string or a finished sequence ends it."""
        if event.finish_reason == "error":
            choice.send(("error", (event.error or "no token could be chosen").splitlines()[0]))
            self._finish(event.seq_id, None, keep=False, notify=False)
            return
        self.generated_tokens += 1
        choice.tokens += 1
        text = choice.decoder.add(event.token)
        if event.finished:
            text += choice.decoder.flush()
        reason = event.finish_reason
        if choice.matcher is not None:
            text, hit = choice.matcher.feed(text)
            if hit:
                reason = "stop"
            elif event.finished:
                text += choice.matcher.flush()
        choice.send(("token", text, event.token, event.logprob, event.top_logprobs))
        if reason is not None:
            self._finish(event.seq_id, reason, keep=True)

    def _finish(self, seq_id: int, reason: str | None, *, keep: bool, notify: bool = True) -> None:
        """End a sequence: keep a snapshot of where its reply ended, then leave the batch."""
        choice = self._running.pop(seq_id)
        try:
            if keep and choice.echo_k is None and self.prefix_cache.max_bytes:
                try:
                    cache = self.decoder.cache_of(seq_id)
                except LookupError:  # a decoder that forgets finished sequences: nothing to keep
                    cache = None
                if cache is not None:
                    self.prefix_cache.store(cache, self._reply_text(choice, cache))
        finally:
            self.decoder.remove(seq_id)
        if notify:
            choice.send(("end", reason, choice.tokens))

    def _reply_text(self, choice: Choice, cache: Any) -> str | None:
        """The rendered chat plus the text of the reply tokens the cache holds (decoded after
        the prompt's last ids, so tokenizers that strip a leading space agree), or None."""
        if choice.text is None:
            return None
        n = len(choice.prompt_ids)
        fed, ctx = cache.tokens[n:], cache.tokens[max(0, n - 4):n]
        tok = self.model.tokenizer
        full = tok.decode(ctx + fed, skip_special_tokens=False)
        head = tok.decode(ctx, skip_special_tokens=False)
        return choice.text + full[len(head):] if full.startswith(head) else None

