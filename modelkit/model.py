"""The runnable model: embedding, a stack of layers built from blocks, final norm and head."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterator, Sequence

import numpy as np

from .batched import layer_forward_batch
from .cache import Cache
from .errors import GenerationError, OutOfMemoryError, out_of_memory
from .flow import add_residual, run_step
from .nn.block import Block, ForwardContext, Observer
from .nn.linear import linear
from .nn.parallel import PIECE_ROWS, blas_held_to_one, map_rows
from .nn.trial import start_head
from .schema.resolve import Config
from .schema.spec import LayerSpec, Mapping

class Layer:
    """One layer: named blocks wired into residual branches, run as steps.

    Each step is one or more branches that read the same x; ``x += residual_multiplier *
    sum(branches)``, then the step's blocks after the add, if any, apply to x (post-norm:
    ``[attn, +, norm]``), before the next step. ``sequential`` layouts make each branch a step
    (pre-norm), ``parallel`` ones all branches one step (Falcon), and a sequential flow may hold a
    parallel step (Falcon-H1: Mamba2 and attention side by side, then the MLP). Branches of a
    step that start with the same blocks compute them once.
    """

    def __init__(self, spec: LayerSpec, blocks: dict[str, Block], residual_multiplier: float, variant: str,
                 index: int = 0):
        self.index = index  # the layer's place in the model, for messages
        self.kinds = {name: b.kind for name, b in spec.blocks.items()}
        self.layout = spec.layout
        self.steps = [[list(branch) for branch in step] for step in spec.steps]
        self.after_add = [list(after) for after in spec.after_add] or [[] for _ in self.steps]
        self.blocks = blocks
        self.variant = variant
        self.residual = np.float32(residual_multiplier)
        self.stateful = [name for name, b in blocks.items() if type(b).new_state is not Block.new_state]

    def new_state(self) -> dict[str, Any]:
        """Cache state for each stateful block of this layer."""
        return {name: self.blocks[name].new_state() for name in self.stateful}

    def forward(self, x: np.ndarray, states: dict[str, Any], ctx: ForwardContext) -> np.ndarray:
        """The layer's output for ``x [T, hidden]``; ``ctx.observer``, when set, sees each
        block's output, each residual sum ("+") and then the layer's output ("output")."""
        def run(name: str, y: np.ndarray) -> np.ndarray:
            return self._run(name, y, states, ctx)

        for step, after in zip(self.steps, self.after_add):
            add_residual(x, run_step(step, x, run), self.residual)
            if ctx.observer is not None:
                ctx.observer(self.index, "+", x)
            for name in after:  # post-norm: blocks of the residual stream after the add
                x = self._run(name, x, states, ctx)
        if ctx.observer is not None:
            ctx.observer(self.index, "output", x)
        return x

    def forward_batch(self, x: np.ndarray, states: Sequence[dict[str, Any]], positions: Sequence[int]) -> np.ndarray:
        """One decoding step of B sequences: ``x [B, hidden]``, row i at ``positions[i]`` with
        its own states ``states[i]`` (see :mod:`modelkit.batched`)."""
        return layer_forward_batch(self, x, states, positions)

    def _run(self, name: str, x: np.ndarray, states: dict[str, Any], ctx: ForwardContext) -> np.ndarray:
        """Block ``name`` on ``x``; a shortage of memory is reported with the layer and block."""
        block = self.blocks[name]
        try:
            if block.TOKENWISE and x.shape[0] >= 2 * PIECE_ROWS:  # a long prompt's rows over the cores
                y = map_rows(lambda rows: block.forward(rows, None, ForwardContext(ctx.pos, rows.shape[0])), x)
            else:
                y = block.forward(x, states.get(name), ctx)
        except MemoryError as exc:
            raise out_of_memory(f"in layer {self.index}, block {name} ({self.kinds.get(name, '?')}), on "
                                f"{ctx.length:,} tokens after {ctx.pos:,}", exc) from None
        if ctx.observer is not None:
            ctx.observer(self.index, name, y)
        return y


class Model:
    """A loaded model. Build it with :func:`modelkit.load`.

    ``forward(ids, cache=None, last_only=False)`` maps token ids [T] to float32 logits
    [T, vocab] (or [1, vocab] with ``last_only``); with a cache it continues the cached sequence
    and extends it. ``generate`` and ``stream`` produce tokens.
    """

    def __init__(self, *, name: str, config: Config, mapping: Mapping, layers: list[Layer],
                 embed: np.ndarray, pos_embed: np.ndarray | None, final_norm: Block | None,
                 head: np.ndarray, head_bias: np.ndarray | None, embedding_multiplier: float,
                 logits_divisor: float, tokenizer: Any = None, generation_config: dict | None = None,
                 source: str = "", tied: bool = False, n_params: int = 0, mapping_file: str = "",
                 prefill_chunk: int = 512, logits_softcap: float | None = None,
                 embed_norm: Block | None = None, embed_proj: np.ndarray | None = None,
                 head_proj: np.ndarray | None = None):
        self.name = name
        self.config = config
        self.mapping = mapping
        self.layers = layers
        # a long prompt runs with BLAS held to one thread and its pieces on every core when
        # every block splits into pieces (see modelkit.nn.parallel)
        self.spreads = all(block.SPREADS for layer in layers for block in layer.blocks.values())
        self.embed = embed  # [vocab, E]: E is the hidden width unless embed_proj maps it there
        self.embed_proj = embed_proj  # [hidden, E] or None
        self.pos_embed = pos_embed
        self.embed_norm = embed_norm
        self.final_norm = final_norm
        self.head_proj = head_proj  # [E, hidden] or None
        # a large head's layout is chosen by timing its own one-row products (nn.trial)
        self.head, self.head_trial = start_head(head)
        if self.embed is head:  # tied: one array
            self.embed = self.head
        self.head_bias = head_bias
        self.embedding_multiplier = np.float32(embedding_multiplier)
        self.logits_divisor = np.float32(logits_divisor)
        self.logits_softcap = None if logits_softcap is None else np.float32(logits_softcap)
        self.tokenizer = tokenizer
        self.generation_config = generation_config or {}
        self.source = source
        self.tied = tied
        self.n_params = n_params
        self.mapping_file = mapping_file
        self.prefill_chunk = prefill_chunk  # tokens per piece of a long prompt
        self.vocab_size = int(embed.shape[0])

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """End-of-sequence ids from config.json, generation_config.json and the tokenizer."""
        return frozenset(_eos_ids(self.config.raw, self.generation_config, self.tokenizer))

    @property
    def max_positions(self) -> int | None:
        """How many tokens the model can hold: its learned positions (GPT-2's n_positions), or
        None for models with relative positions (rotary, ALiBi, none), which have no hard limit."""
        return int(self.pos_embed.shape[0]) if self.pos_embed is not None else None

    # ---- caches -------------------------------------------------------------------------
    def make_cache(self) -> Cache:
        """A fresh, empty cache for one sequence (one state per stateful block)."""
        return Cache([layer.new_state() for layer in self.layers])

    # ---- forward ------------------------------------------------------------------------
    def forward(self, ids: Sequence[int] | np.ndarray, cache: Cache | None = None,
                last_only: bool = False, *, observer: Observer | None = None) -> np.ndarray:
        """Logits for ``ids`` [T]: float32 [T, vocab], or [1, vocab] with ``last_only``.

        With ``cache``, the ids continue the cached sequence and the cache is extended; without,
        a temporary cache is used. Long inputs run in pieces of ``prefill_chunk`` tokens.
        Values beyond float32 come out as inf or NaN, silently (no NumPy warnings: generation
        stops at a non-finite logit and says where it began).

        ``observer(layer, name, x)``, when given, is called with every intermediate result, in
        order (once per piece of a long input): ``(None, "embed", h)`` for the input of layer 0
        (after the embedding norm, if any); in layer ``i``, ``(i, block, y)`` for each block's
        output (before the residual multiplier; blocks shared by parallel branches once),
        ``(i, "+", x)`` for each residual sum and ``(i, "output", x)`` for what the layer hands
        on; then ``(None, "final_norm", h)`` for the rows the head reads and ``(None, "logits",
        logits)``. Arrays are float32 views of the model's working buffers: copy what you keep.
        ``modelkit compare`` and the NaN diagnosis of generation are built on it
        (docs/evaluation.md).
        """
        ids = self._check_ids(ids)
        if cache is None:
            cache = self.make_cache()
        if ids.size == 0:
            return np.empty((0, self.vocab_size), np.float32)
        pieces = []
        chunk = self.prefill_chunk
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for start in range(0, ids.size, chunk):
                piece = ids[start:start + chunk]
                is_last = start + chunk >= ids.size
                with blas_held_to_one() if self.spreads and piece.size >= 2 * PIECE_ROWS else nullcontext():
                    h = self._run_layers(piece, cache, observer)
                if last_only and not is_last:
                    continue
                pieces.append(self._head(h[-1:] if last_only else h, observer))
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)

    def decode_batch(self, ids: Sequence[int] | np.ndarray, caches: Sequence[Cache]) -> np.ndarray:
        """Logits [B, vocab] for one new token of each of B sequences: ``ids[i]`` continues
        ``caches[i]``, which is extended. Row i equals ``forward([ids[i]], caches[i])`` up to
        float32 rounding; every weight is read once for the whole batch."""
        ids = self._check_ids(ids)
        if ids.size != len(caches):
            raise GenerationError(f"decode_batch: {ids.size} ids for {len(caches)} caches")
        if len({id(c) for c in caches}) != len(caches):
            raise GenerationError("decode_batch: one cache appears twice (each sequence needs its own)")
        if ids.size == 0:
            return np.empty((0, self.vocab_size), np.float32)
        positions = [c.length for c in caches]
        if self.pos_embed is not None and max(positions) >= self.pos_embed.shape[0]:
            raise GenerationError(f"sequence of {max(positions) + 1} tokens is longer than the model's "
                                  f"{self.pos_embed.shape[0]} learned positions")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            h = self._embed_rows(ids, positions)
            for i, layer in enumerate(self.layers):
                h = layer.forward_batch(h, [c.layers[i] for c in caches], positions)
            for cache, token in zip(caches, ids.tolist()):
                cache.length += 1
                cache.tokens.append(token)
            return self._head(h)

    def end_batch(self) -> None:
        """No batch is decoding any more: every block drops what it kept for batched steps
        (:meth:`~modelkit.nn.block.Block.end_batch`). Caches stay valid; :class:`BatchDecoder`
        calls this when its last sequence leaves."""
        for layer in self.layers:
            for block in layer.blocks.values():
                block.end_batch()

    def prefill_batch(self, prompts: Sequence[Sequence[int] | np.ndarray], caches: Sequence[Cache]) -> np.ndarray:
        """Read ``prompts[i]`` into ``caches[i]`` for every i in the same forwards (token-wise
        work over all their tokens at once, attention and recurrent state per sequence; at most
        ``prefill_chunk`` rows a forward); the logits after each prompt's last token, [B, vocab].
        Row i equals ``forward(prompts[i], caches[i], last_only=True)[0]`` up to float32
        rounding (see :mod:`modelkit.prefill`)."""
        from .prefill import prefill_batch

        return prefill_batch(self, prompts, caches)

    def _embed_rows(self, ids: np.ndarray, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """The input of layer 0 for tokens ``ids`` [N] at ``positions`` [N] (of any sequences)."""
        h = self.embed[ids]  # [N] -> [N, E] (a copy we own)
        if self.embedding_multiplier != 1.0:
            h *= self.embedding_multiplier
        if self.embed_proj is not None:
            h = h @ self.embed_proj.T  # [N, E] -> [N, D]
        if self.pos_embed is not None:
            h += self.pos_embed[positions]
        if self.embed_norm is not None:
            h = self.embed_norm.forward(h, None, ForwardContext(0, h.shape[0]))
        return h

    def hidden_states(self, ids: Sequence[int] | np.ndarray, cache: Cache | None = None) -> np.ndarray:
        """The final-normed hidden states [T, hidden] (before the head)."""
        ids = self._check_ids(ids)
        cache = cache if cache is not None else self.make_cache()
        chunk = self.prefill_chunk
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            outs = [self._run_layers(ids[s:s + chunk], cache) for s in range(0, ids.size, chunk)]
            h = np.concatenate(outs, axis=0)
            return self.final_norm.forward(h, None, ForwardContext(0, h.shape[0])) if self.final_norm else h

    def _check_ids(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise GenerationError(f"ids must be a 1-D sequence of integers, got shape {arr.shape} {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.size and (arr.min() < 0 or arr.max() >= self.vocab_size):
            bad = int(arr[(arr < 0) | (arr >= self.vocab_size)][0])
            raise GenerationError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1})")
        return arr

    def _run_layers(self, ids: np.ndarray, cache: Cache, observer: Observer | None = None) -> np.ndarray:
        t = ids.size
        pos = cache.length
        if self.pos_embed is not None and pos + t > self.pos_embed.shape[0]:
            raise GenerationError(f"sequence of {pos + t} tokens is longer than the model's "
                                  f"{self.pos_embed.shape[0]} learned positions")
        ctx = ForwardContext(pos, t, observer=observer)
        try:
            h = self.embed[ids]  # [T] -> [T, E] (a copy we own)
            if self.embedding_multiplier != 1.0:
                h *= self.embedding_multiplier
            if self.embed_proj is not None:
                h = h @ self.embed_proj.T  # [T, E] -> [T, D]
            if self.pos_embed is not None:
                h += self.pos_embed[pos:pos + t]
            if self.embed_norm is not None:
                h = self.embed_norm.forward(h, None, ctx)
            if observer is not None:
                observer(None, "embed", h)
        except MemoryError as exc:
            raise out_of_memory(f"embedding {t:,} tokens", exc) from None
        for layer, states in zip(self.layers, cache.layers):
            try:
                h = layer.forward(h, states, ctx)
            except OutOfMemoryError:  # a block's, named by the layer
                raise
            except MemoryError as exc:  # the residual stream's
                raise out_of_memory(f"in layer {layer.index}, on {t:,} tokens after {pos:,}", exc) from None
        cache.length += t
        cache.tokens.extend(int(i) for i in ids)
        return h

    def _head(self, h: np.ndarray, observer: Observer | None = None) -> np.ndarray:
        try:
            if self.final_norm is not None:
                h = self.final_norm.forward(h, None, ForwardContext(0, h.shape[0]))
            if observer is not None:
                observer(None, "final_norm", h)
            if self.head_proj is not None:
                h = h @ self.head_proj.T  # [T, D] -> [T, E]
            if h.shape[0] == 1 and self.head_trial is not None and self.head_trial.kept is None:
                logits = self._trial_product(h)
            else:
                logits = linear(h, self.head)  # [T, E] -> [T, vocab]
        except MemoryError as exc:
            raise out_of_memory(f"computing the logits of {h.shape[0]:,} tokens over {self.vocab_size:,} "
                                f"vocabulary entries", exc) from None
        if self.head_bias is not None:
            logits += self.head_bias
        if self.logits_divisor != 1.0:
            logits /= self.logits_divisor
        if self.logits_softcap is not None:  # cap * tanh(logits / cap)
            logits /= self.logits_softcap
            np.tanh(logits, out=logits)
            logits *= self.logits_softcap
        if observer is not None:
            observer(None, "logits", logits)
        return logits

    def _trial_product(self, h: np.ndarray) -> np.ndarray:
        """The head's product with one row ``h [1, E]`` while its layout trial runs; when the
        trial ends, the head (and a tied embedding, the same array) becomes the layout kept."""
        logits = self.head_trial.product(h)
        kept = self.head_trial.kept
        if kept is not None and kept is not self.head:
            if self.embed is self.head:  # tied: one array in the kept layout (its rows gather strided)
                self.embed = kept
            self.head = kept
        return logits

    # ---- generation ---------------------------------------------------------------------
    def generate(self, prompt_ids: Sequence[int], max_new_tokens: int = 16, temperature: float | None = None,
                 **options: Any) -> list[int]:
        """New token ids after ``prompt_ids`` (greedy at temperature 0; None takes the default of
        generation_config.json); when an EOS or stop token stops generation it is the last
        element. ``logprobs=K`` returns ``(ids, [TokenLogprob per id])`` instead. See
        :mod:`modelkit.generation.loop`."""
        from .generation.loop import generate

        return generate(self, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, **options)

    def generate_batch(self, prompts: Sequence[Sequence[int]], **options: Any) -> list[list[int]]:
        """New ids after each prompt, all decoded together (see
        :func:`modelkit.generation.batch.generate_batch`): the same ids as ``generate`` gives
        each prompt alone, with the options of ``generate``."""
        from .generation.batch import generate_batch

        return generate_batch(self, prompts, **options)

    def stream(self, prompt_ids: Sequence[int], **options: Any) -> Iterator[Any]:
        """Yield text pieces (with their token ids, and with ``logprobs=K`` their log-probabilities)
        as they are generated; options as generate."""
        from .generation.loop import stream

        return stream(self, prompt_ids, **options)

    def score(self, text_or_ids: str | Sequence[int] | np.ndarray) -> Any:
        """Per-token log-probabilities of a text or of token ids: a
        :class:`modelkit.evaluation.logprobs.Scores` with ``ids [T]`` and float32
        ``logprobs [T-1]`` (``logprobs[j]`` = log p(ids[j+1] | ids[:j+1])), ``nll``, ``perplexity``."""
        from .evaluation.logprobs import score

        return score(self, text_or_ids)

    def parameter_count(self) -> int:
        """Number of parameters as stored in the checkpoint (the tied head counted once)."""
        return self.n_params

    def __repr__(self) -> str:
        return (f"<modelkit.Model {self.name}: {len(self.layers)} layers, "
                f"hidden {self.config.get('hidden_size', self.embed.shape[1])}, vocab {self.vocab_size}>")


def _eos_ids(raw: dict[str, Any], generation_config: dict[str, Any], tokenizer: Any) -> set[int]:
    """End-of-sequence ids from config.json, generation_config.json and the tokenizer (any may be a list)."""
    out: set[int] = set()
    for source in (raw, generation_config):
        value = source.get("eos_token_id")
        if isinstance(value, int) and not isinstance(value, bool):
            out.add(value)
        elif isinstance(value, list):
            out.update(v for v in value if isinstance(v, int) and not isinstance(v, bool))
    if tokenizer is not None and tokenizer.eos_token:
        tid = tokenizer.token_id(tokenizer.eos_token)
        if tid is not None:
            out.add(tid)
    return out
