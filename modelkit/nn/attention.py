"""Causal self-attention: MHA/GQA/MQA, RoPE or ALiBi or no positions, sliding window, biases.

One block serves GPT-2, Llama, Mistral, Falcon and Granite: the differences are options
(score scale, positions, window) and which optional biases the checkpoint supplies.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError, out_of_memory
from .block import Block, ForwardContext, ParamSpec, row_spans
from .kv_cache import KV_BLOCK, KVCache
from .kv_pool import KVSlotPool, pools_well
from .linear import linear, product_layout, widen
from .norms import layer_norm, rms_norm
from .options import Option
from .parallel import map_pieces
from .rope import inverse_frequencies, rotary_table, rotate
from .scores import alibi_slopes, causal_bias, largest_norm
from .softmax import EXP_FLOOR, soft_cap, softmax_inplace

# queries per block when attending over long prompts (the tunable option query_block): bounds
# the scores to [group * query_block, keys] per kv head at a time instead of [heads, T, T]
QUERY_BLOCK = 256
# ... and at most about this many scores (floats) per kv head, so that they stay in cache
# through the softmax; blocks never shrink below SCORE_MIN_QUERIES queries (measured at 2048
# and 8192 keys: 32 and 64 alike, 8 and 16 slower)
SCORE_BLOCK = 1 << 18
SCORE_MIN_QUERIES = 32
# where |q| |k| bounds every score of a block within this of zero, the softmax needs no shift by
# each row's maximum: exp stays a normal float32 (e^-64 .. e^64) and its sums are far from
# overflow; three of its five passes over the scores are saved (on SmolLM2's real weights,
# 2048 tokens, about 70% of the blocks)
DIRECT_EXP_BOUND = 64.0


class Attention(Block):
    """Multi-head causal self-attention with grouped KV heads.

    The score scale defaults to 1/sqrt(head_dim); positions are rotary (optionally on the first
    ``rope_dim`` channels only, with ``rope_scaling`` and, when the checkpoint has it, the
    per-frequency divisors ``rope_freq_factors``; pairs of channels by halves or interleaved),
    ALiBi or none; ``window`` limits each query to itself and the window-1 keys before it.
    """

    SPREADS = True  # long prompts: its products by rows, its query blocks on the pool

    OPTIONS = {
        "num_heads": Option("int", "$num_heads", "query heads", min=1),
        "num_kv_heads": Option("int", "$num_kv_heads", "key/value heads (grouped-query attention)", min=1),
        "head_dim": Option("int", "$head_dim", "channels per head", min=1),
        "hidden_size": Option("int", "$hidden_size", "width of the hidden states", min=1),
        "scale": Option("float", None, "score multiplier (null: 1/sqrt(head_dim))", nullable=True),
        "positions": Option("str", doc="position encoding", choices=("rope", "alibi", "none")),
        "rope_theta": Option("float", 10000.0, "rotary base", min=0.0),
        "rope_scaling": Option("dict", None, "rotary scaling (default, linear, llama3)", nullable=True),
        "rope_dim": Option("int", None, "rotated channels per head (null: all)", min=2, nullable=True),
        "rope_layout": Option("str", "halves", "rotary pairs: channel j with j + rope_dim/2 (halves: Llama) "
                              "or 2m with 2m + 1 (interleaved: GPT-J, Cohere)", choices=("halves", "interleaved")),
        "alibi_scaled": Option("bool", False, "add ALiBi before the score scale (Falcon)"),
        "alibi_dtype": Option("str", "float32", "round ALiBi through bfloat16 (Falcon)",
                              choices=("float32", "bfloat16")),
        "window": Option("int", None, "sliding window in tokens (null: none)", min=1, nullable=True),
        "clip_qkv": Option("float", None, "q, k and v are clamped into [-clip_qkv, clip_qkv] after their "
                           "projection (OLMo)", min=0.0, nullable=True),
        "qk_norm": Option("str", None, "RMSNorm of queries and keys before rotary: per_head (each "
                          "head's channels: Qwen3, Gemma 3) or full (the whole projection: OLMo 2)",
                          choices=("per_head", "full"), nullable=True),
        "qk_norm_eps": Option("float", 1e-6, "epsilon of the query/key norms", min=0.0),
        "qk_norm_kind": Option("str", "rmsnorm", "the query/key norm: rmsnorm, or layernorm (mean "
                               "subtracted, optional bias: Cohere, StableLM, Phi)", choices=("rmsnorm", "layernorm")),
        "qk_norm_weights": Option("str", "shared", "per_head norms: one weight for every head (shared) or "
                                  "each head its own (per_head: StableLM 2 12B, Command R+)",
                                  choices=("shared", "per_head")),
        "softcap": Option("float", None, "scores become softcap * tanh(scores / softcap) (Gemma 2)",
                          min=1e-6, nullable=True, divisor=True),
        "query_block": Option("int", QUERY_BLOCK, "queries per block over long prompts", min=1, max=4096,
                              tunable=True),
    }
    PARAMETERS = ("q.weight", "k.weight", "v.weight", "o.weight", "q.bias", "k.bias", "v.bias",
                  "o.bias", "q_norm.weight", "k_norm.weight", "q_norm.bias", "k_norm.bias",
                  "rope_freq_factors")

    @classmethod
    def params(cls, opts: dict[str, Any]) -> dict[str, ParamSpec]:
        h, kv, hd, d = opts["num_heads"], opts["num_kv_heads"], opts["head_dim"], opts["hidden_size"]
        if h % kv:
            raise ConfigError(f"attention: {h} heads do not divide into {kv} key/value heads")
        if opts["scale"] is not None and not math.isfinite(opts["scale"]):
            raise ConfigError(f"attention: scale must be a finite number or null, got {opts['scale']!r}")
        rot = opts["rope_dim"] or hd
        specs = {
            "q.weight": ParamSpec((h * hd, d)), "k.weight": ParamSpec((kv * hd, d)),
            "v.weight": ParamSpec((kv * hd, d)), "o.weight": ParamSpec((d, h * hd)),
            "q.bias": ParamSpec((h * hd,), False), "k.bias": ParamSpec((kv * hd,), False),
            "v.bias": ParamSpec((kv * hd,), False), "o.bias": ParamSpec((d,), False),
        }
        if opts["qk_norm"] is not None:
            q_shape, k_shape = _qk_norm_shapes(opts)
            specs["q_norm.weight"], specs["k_norm.weight"] = ParamSpec(q_shape), ParamSpec(k_shape)
            if opts["qk_norm_kind"] == "layernorm":
                specs["q_norm.bias"], specs["k_norm.bias"] = ParamSpec(q_shape, False), ParamSpec(k_shape, False)
        if opts["positions"] == "rope":  # bad rope settings fail at planning, before any tensor is read
            if rot > hd or rot % 2:
                raise ConfigError(f"attention: rope_dim {rot} must be even and at most head_dim {hd}")
            # the settings' checks do not depend on the width: two channels check them without
            # allocating anything proportional to a config value nobody has checked yet
            inverse_frequencies(2, opts["rope_theta"], opts["rope_scaling"])
            specs["rope_freq_factors"] = ParamSpec((rot // 2,), False)
        return specs

    def build(self, params: dict[str, np.ndarray | None]) -> None:
        o = self.options
        self.h, self.kv, self.hd = o["num_heads"], o["num_kv_heads"], o["head_dim"]
        self.group = self.h // self.kv
        self.query_block = o["query_block"]
        # one fused projection for q, k and v, made once at load
        self.w_qkv = product_layout(params["q.weight"], params["k.weight"], params["v.weight"])
        biases = [params.get("q.bias"), params.get("k.bias"), params.get("v.bias")]
        if any(b is not None for b in biases):
            sizes = (self.h * self.hd, self.kv * self.hd, self.kv * self.hd)
            self.b_qkv = np.concatenate([b if b is not None else np.zeros(n, np.float32)
                                         for b, n in zip(biases, sizes)])
        else:
            self.b_qkv = None
        self.d = params["o.weight"].shape[0]
        self.w_o = widen(product_layout(params["o.weight"]))  # [D (or more: widen), H * hd]
        self._pool: KVSlotPool | None = None  # the caches of a running batch (forward_batch)
        self.b_o = params.get("o.bias")
        self.scale = np.float32(o["scale"] if o["scale"] is not None else 1.0 / math.sqrt(self.hd))
        self.window = o["window"]
        self.rope = None
        if o["positions"] == "rope":
            self.rot_dim = o["rope_dim"] or self.hd
            self.interleaved = o["rope_layout"] == "interleaved"
            self.rope = rotary_table(self.rot_dim, o["rope_theta"], o["rope_scaling"],
                                     params.get("rope_freq_factors"), self.interleaved)
        self.slopes = alibi_slopes(self.h).reshape(self.kv, self.group, 1, 1) if o["positions"] == "alibi" else None
        self.alibi_bf16 = o["alibi_dtype"] == "bfloat16"
        self.alibi_scaled = o["alibi_scaled"]
        self.qk_norm = o["qk_norm"]
        self.qk_norm_eps = o["qk_norm_eps"]
        self.qk_layernorm = o["qk_norm_kind"] == "layernorm"
        self.q_norm, self.k_norm = params.get("q_norm.weight"), params.get("k_norm.weight")
        self.q_norm_bias, self.k_norm_bias = params.get("q_norm.bias"), params.get("k_norm.bias")
        self.softcap = None if o["softcap"] is None else np.float32(o["softcap"])
        self.clip = None if o["clip_qkv"] is None else np.float32(o["clip_qkv"])

    def new_state(self) -> KVCache:
        return KVCache(self.kv, self.hd, self.window)

    def _project(self, x: np.ndarray) -> np.ndarray:
        """q, k and v of the rows of ``x`` side by side, ``[T, (H + 2KV) * hd]``: the fused
        projection, its bias, the clip and the q/k norms (rotary is the caller's: it needs
        the positions)."""
        qkv = linear(x, self.w_qkv)
        if self.b_qkv is not None:
            qkv += self.b_qkv
        if self.clip is not None:
            np.clip(qkv, -self.clip, self.clip, out=qkv)
        if self.qk_norm is not None:
            self._norm_qk(qkv, x.shape[0], self.h * self.hd, self.kv * self.hd)
        return qkv

    def forward(self, x: np.ndarray, state: KVCache | None, ctx: ForwardContext) -> np.ndarray:
        return self._mix(x, [state if state is not None else self.new_state()], [ctx])

    def forward_ragged(self, x: np.ndarray, states: Sequence[KVCache], ctxs: Sequence[ForwardContext]) -> np.ndarray:
        """The prompts of B sequences at once, their rows one after the other (see
        :meth:`Block.forward_ragged`): the projections over every row (one pass over the
        weights), then each sequence's rotary, cache and attention on its own rows, as
        :meth:`forward` does for one."""
        return self._mix(x, states, ctxs)

    def _mix(self, x: np.ndarray, states: Sequence[KVCache], ctxs: Sequence[ForwardContext]) -> np.ndarray:
        """Sequence i's ``ctxs[i].length`` rows of ``x``, from position ``ctxs[i].pos``, over its
        cache ``states[i]`` (which they extend); the sequences' rows one after the other."""
        qkv = self._project(x)  # [T, D] -> [T, (H + 2KV) * hd]
        nq, nk = self.h * self.hd, self.kv * self.hd
        out = np.empty((x.shape[0], nq), np.float32)
        for (s0, s1), state, ctx in zip(row_spans(ctxs), states, ctxs):
            t, part = s1 - s0, qkv[s0:s1]
            if self.rope is not None:
                # q and k heads side by side, rotated in place inside qkv in one pass
                cos, sin_signed = self.rope.get_signed(ctx.pos, ctx.pos + t)
                rotate(part[:, :nq + nk].reshape(t, self.h + self.kv, self.hd), cos, sin_signed, self.rot_dim,
                       self.interleaved)
            q = part[:, :nq].reshape(t, self.h, self.hd)
            k = part[:, nq:nq + nk].reshape(t, self.kv, self.hd)
            v = part[:, nq + nk:].reshape(t, self.kv, self.hd)
            start = state.length
            state.append(k, v)
            try:
                out[s0:s1] = self.attend(q, state, start)  # [T, H * hd]
            except MemoryError as exc:
                raise out_of_memory(f"computing attention scores of {t:,} queries over {state.length:,} keys",
                                    exc) from None
        y = linear(out, self.w_o, self.d)  # [T, H * hd] -> [T, D]
        if self.b_o is not None:
            y += self.b_o
        return y

    def forward_batch(self, x: np.ndarray, states: Sequence[KVCache], positions: Sequence[int]) -> np.ndarray:
        """One token of each of B sequences, ``x [B, D]``: the projections over every row at
        once (one pass over the weights), rotary at each row's own position, then each query
        over its own sequence's cache, exactly as a one-token :meth:`forward`."""
        b = x.shape[0]
        qkv = self._project(x)  # [B, D] -> [B, (H + 2KV) * hd]
        nq, nk = self.h * self.hd, self.kv * self.hd
        if self.rope is not None:
            pos = np.asarray(positions, dtype=np.intp)
            cos, sin_signed = self.rope.get_signed(0, int(pos.max()) + 1)
            rotate(qkv[:, :nq + nk].reshape(b, self.h + self.kv, self.hd), cos[pos], sin_signed[pos],
                   self.rot_dim, self.interleaved)
        q = qkv[:, :nq].reshape(b, self.h, self.hd)
        k = qkv[:, nq:nq + nk].reshape(b, self.kv, self.hd)
        v = qkv[:, nq + nk:].reshape(b, self.kv, self.hd)
        if b > 1 and self.slopes is None and pools_well(states):
            out = self._attend_pooled(q, k, v, states)
        else:
            self.end_batch()  # row by row: any seated cache gets arrays of its own back
            out = np.empty((b, nq), np.float32)
            for i, state in enumerate(states):  # each sequence over its own keys
                start = state.length
                state.append(k[i:i + 1], v[i:i + 1])
                out[i] = self.attend(q[i:i + 1], state, start)[0]
        y = linear(out, self.w_o, self.d)  # [B, H * hd] -> [B, D]
        if self.b_o is not None:
            y += self.b_o
        return y

    def _attend_pooled(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       states: Sequence[KVCache]) -> np.ndarray:
        """One new query, key and value per sequence (``q`` [B, H, hd], ``k``/``v`` [B, KV, hd])
        over the caches seated side by side in this layer's :class:`KVSlotPool`: one append,
        two products and one softmax for the whole batch, each row masked to its own keys (the
        last ``window`` with a window), as :meth:`_attend_one` gives each -> [B, H * hd]."""
        if self._pool is None:
            self._pool = KVSlotPool(self.kv, self.hd)
        slots = self._pool.seat(states)  # row i's cache is in slot slots[i]
        b = q.shape[0]
        order = None if slots.tolist() == list(range(b)) else np.argsort(slots)  # row of slot s: order[s]
        if order is not None:
            q, k, v = q[order], k[order], v[order]
        held = self._pool.append(k, v)  # [B]: each slot's positions, the new one included
        qh = (q * self.scale).reshape(b, self.kv, self.group, self.hd)  # head h reads kv head h // group
        out = self._pool.attend(qh, held, self.window, self.softcap).reshape(b, self.h * self.hd)
        return out if order is None else out[slots]  # back to row order

    def end_batch(self) -> None:
        """The running batch is over: its caches get arrays of their own, the pool is dropped."""
        if self._pool is not None:
            self._pool.seat([])
            self._pool = None

    def _norm_qk(self, qkv: np.ndarray, t: int, nq: int, nk: int) -> None:
        """RMSNorm or LayerNorm of the queries and keys inside ``qkv`` [T, (H + 2KV) * hd], in place."""
        q, k = qkv[:, :nq], qkv[:, nq:nq + nk]
        if self.qk_norm == "per_head":  # [T, heads, hd]: each head's channels on their own
            qkv[:, :nq] = self._qk(q.reshape(t, self.h, self.hd), self.q_norm, self.q_norm_bias).reshape(t, nq)
            qkv[:, nq:nq + nk] = self._qk(k.reshape(t, self.kv, self.hd), self.k_norm,
                                          self.k_norm_bias).reshape(t, nk)
        else:  # the whole projection of each token
            qkv[:, :nq] = self._qk(np.ascontiguousarray(q), self.q_norm, self.q_norm_bias)
            qkv[:, nq:nq + nk] = self._qk(np.ascontiguousarray(k), self.k_norm, self.k_norm_bias)

    def _qk(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """One query/key norm over the last axis; ``weight`` [hd], [heads, hd] or [width]."""
        if self.qk_layernorm:
            return layer_norm(x, weight, bias, self.qk_norm_eps)
        return rms_norm(x, weight, self.qk_norm_eps)

    def alibi(self, kpos: np.ndarray) -> np.ndarray:
        """ALiBi biases slope * key position, [KV, group, 1, S]."""
        if self.alibi_bf16:
            from ml_dtypes import bfloat16

            # bf16(bf16(slope) * position), positions exact
            slopes = self.slopes.astype(bfloat16).astype(np.float32)
            return (slopes * kpos.astype(np.float32)).astype(bfloat16).astype(np.float32)
        return self.slopes * kpos.astype(np.float32)

    def attend(self, q: np.ndarray, cache: KVCache, start: int) -> np.ndarray:
        """Attention of queries q [T, H, hd] at positions start.. over the cached keys."""
        t = q.shape[0]
        if self.slopes is None:
            # without ALiBi the score scale can go on the queries: T*H*hd products instead of H*T*S
            q = q * self.scale
        if t == 1 and self.slopes is None:
            return self._attend_one(q, cache)
        out = np.empty((t, self.kv, self.group, self.hd), np.float32)
        qh = q.reshape(t, self.kv, self.group, self.hd)  # query head h reads kv head h // group
        # query blocks small enough that one kv head's scores for a block stay in cache through
        # the softmax's passes (NumPy's elementwise work is memory-bound)
        qb_max = self.query_block
        keys_seen = start + t if self.window is None else min(start + t, self.window + qb_max)
        step = min(qb_max, max(SCORE_MIN_QUERIES, SCORE_BLOCK // (self.group * keys_seen)))
        bias = causal_bias(step) if self.window is None else None
        key_bound = None
        if self.slopes is None and self.softcap is None:  # [KV, held]: the largest key norm up to each
            keys = cache.kt[:, :, : cache.length - cache.offset]
            key_bound = np.maximum.accumulate(np.sqrt(np.einsum("kds,kds->ks", keys, keys)), axis=1)
        # the blocks are independent: spread over the cores, the last (seeing the most keys) first
        spans = [(b0, min(t, b0 + step)) for b0 in range(0, t, step)][::-1]
        map_pieces(lambda span: self._attend_block(qh, cache, start, span, bias, out, key_bound), spans)
        return out.reshape(t, self.h * self.hd)

    def _attend_block(self, qh: np.ndarray, cache: KVCache, start: int, span: tuple[int, int],
                      bias: np.ndarray | None, out: np.ndarray, key_bound: np.ndarray | None) -> None:
        """Queries ``span`` of ``qh`` [T, KV, group, hd] over the keys they see, into the same
        rows of ``out`` [T, KV, group, hd]: one kv head at a time, so that the scores of a
        head's group of queries ([tb * group, S]) stay in cache from their product with the
        keys to their product with the values. ``key_bound`` [KV, held] (the largest key norm
        up to each position), when given, lets a block whose scores it bounds within
        ``DIRECT_EXP_BOUND`` skip the softmax's shift."""
        b0, b1 = span
        n_keys = start + b1  # keys a query in this block can see at most
        k0 = 0 if self.window is None else max(0, start + b0 - self.window + 1)
        off = cache.offset  # positions before it are no longer stored (a window's cache)
        tb = b1 - b0
        rows = tb * self.group  # one kv head's queries: [tb, group] flattened
        alibi = None if self.slopes is None else self.alibi(np.arange(k0, n_keys))  # [KV, group, 1, S]
        hidden = None
        if self.window is not None:
            kpos = np.arange(k0, n_keys)
            qpos = np.arange(start + b0, start + b1)[:, None]
            hidden = ((kpos[None, :] > qpos) | (kpos[None, :] <= qpos - self.window))[:, None, :]  # [tb, 1, S]
        # the floor as a [rows, 1] array, not a scalar: NumPy's maximum against a scalar (or a
        # broadcast one) runs about half as fast
        floor = np.full((rows, 1), EXP_FLOOR, np.float32)
        for j in range(self.kv):
            qb = qh[b0:b1, j].reshape(rows, self.hd)  # [tb, group, hd] -> [rows, hd] (a small copy)
            keys, values = cache.kt[j, :, k0 - off:n_keys - off], cache.v[j, k0 - off:n_keys - off]
            masks = (j, tb, alibi, hidden, bias)
            ctx = None
            # softmax, normalised after the product with the values ([.., hd] divisions, not [.., S])
            if key_bound is not None and largest_norm(qb) * key_bound[j, n_keys - off - 1] <= DIRECT_EXP_BOUND:
                scores = self._scores(qb, keys, *masks)
                np.exp(scores, out=scores)  # every score in [-64, 64]: no shift, no floor
                total = scores.sum(axis=-1, keepdims=True)
                with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught below
                    ctx = scores @ values
                if not np.isfinite(ctx).all():  # values so large that unshifted sums overflow
                    ctx = None
            if ctx is None:
                scores = self._scores(qb, keys, *masks)
                top = scores.max(axis=-1, keepdims=True)  # [rows, 1]
                scores -= top
                np.maximum(scores, floor, out=scores)  # no subnormals (see EXP_FLOOR)
                np.exp(scores, out=scores)
                total = scores.sum(axis=-1, keepdims=True)
                ctx = scores @ values  # [rows, S] @ [S, hd] -> [rows, hd]
            ctx /= total
            out[b0:b1, j] = ctx.reshape(tb, self.group, self.hd)

    def _scores(self, qb: np.ndarray, keys: np.ndarray, j: int, tb: int, alibi: np.ndarray | None,
                hidden: np.ndarray | None, bias: np.ndarray | None) -> np.ndarray:
        """kv head ``j``'s scores of queries ``qb`` [rows, hd] over ``keys`` [hd, S], with ALiBi,
        the soft cap and the masks (``hidden`` [tb, 1, S] of a window, else the causal
        ``bias`` on the block's own last tb keys) -> [rows, S]."""
        scores = qb @ keys  # [rows, hd] @ [hd, S] -> [rows, S]
        s = scores.shape[1]
        by_query = scores.reshape(tb, self.group, s)
        if alibi is not None:
            if self.alibi_scaled:
                by_query += alibi[j].reshape(1, self.group, s)
                scores *= self.scale
            else:
                scores *= self.scale
                by_query += alibi[j].reshape(1, self.group, s)
        if self.softcap is not None:
            soft_cap(scores, self.softcap)
        if hidden is not None:
            np.copyto(by_query, np.float32(-np.inf), where=hidden)
        elif tb > 1:
            # only the last tb keys (this block's own positions) can lie in a query's future
            by_query[:, :, s - tb:] += bias[:tb, None, :tb]
        return scores

    def _attend_one(self, q: np.ndarray, cache: KVCache) -> np.ndarray:
        """One (already scaled) query [1, H, hd] over the keys it sees (every cached one, or the
        last ``window``): the decoding step."""
        n = cache.length - cache.offset
        lo = 0 if self.window is None else max(0, n - self.window)
        qh = q.reshape(self.kv, self.group, self.hd)  # head h reads kv head h // group
        scores = qh @ cache.kt[:, :, lo:n]  # [KV, group, hd] @ [KV, hd, S] -> [KV, group, S]
        if self.softcap is not None:
            soft_cap(scores, self.softcap)
        softmax_inplace(scores)
        return (scores @ cache.v[:, lo:n]).reshape(1, self.h * self.hd)  # [KV, group, hd] -> [1, H * hd]


def _qk_norm_shapes(opts: dict[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of q_norm.weight and k_norm.weight (and of their biases)."""
    h, kv, hd = opts["num_heads"], opts["num_kv_heads"], opts["head_dim"]
    if opts["qk_norm"] == "full":
        if opts["qk_norm_weights"] == "per_head":
            raise ConfigError("attention: qk_norm_weights: per_head needs qk_norm: per_head")
        return (h * hd,), (kv * hd,)
    if opts["qk_norm_weights"] == "per_head":
        return (h, hd), (kv, hd)
    return (hd,), (hd,)
