"""Mamba2 (state-space duality) math over float32 NumPy arrays, as pure functions.

Shapes: T time steps, C conv channels (d_inner + 2 * groups * d_state), H heads of P channels
(H * P = d_inner), G groups of B/C vectors of size N (d_state); head h reads group h // (H / G).

The recurrence, per head::

    state = exp(dt * A) * state + dt * outer(x, B)       # state [P, N]
    y     = state @ C + D * x

(all heads' states are stored together, [G, N, H/G * P]: see :func:`state_shape`).
:func:`ssd_chunked` computes it for a whole prompt with matrix products inside chunks and the
recurrence only across chunks; :func:`ssd_step` is the constant-time step for one token, which
keeps recent steps in :class:`PendingSteps` and folds them into the state every
:data:`PENDING_WINDOW` tokens (:func:`fold_pending`). Both continue from a given state and
leave the final state in it (updated in place), so a prompt may arrive in pieces and decoding
picks up where prefill stopped.
"""

from __future__ import annotations

import numpy as np

from modelkit import silu, softplus

# exp() of anything above this overflows float32; A_log is clamped here so A stays finite
# (an infinite A times a zero step would give NaN instead of "no decay")
_MAX_LOG_DECAY_RATE = np.float32(88.0)
# decays below exp(-60) ~ 9e-27 become exactly 0: their products with scores and inputs would
# otherwise fall below ~1e-38, where float32 turns subnormal, and arithmetic on subnormals is
# ~10x slower on common CPUs (a long chunk produces many of them)
_LOG_DECAY_FLOOR = np.float32(-60.0)
# per-step log decays are floored here: sums over a chunk stay finite (no overflow warnings)
_LOG_DECAY_MIN = np.float32(-1e4)


def step_log_decay(dt: np.ndarray, a: np.ndarray) -> np.ndarray:
    """dt * A, the log of each step's decay, floored at -1e4: any decay below exp(-60) is 0
    anyway, and a finite floor keeps extreme products (and their running sums) from
    overflowing to -inf.

    An extreme dt * A overflows to -inf before the floor: NumPy warns of it unless the caller
    ignores overflow, as every model forward does. No error state is set here: it runs once a
    layer a decoded token, and the context cost more than the arithmetic (a granite-350m token
    1.6% more time)."""
    out = dt * a
    return np.maximum(out, _LOG_DECAY_MIN, out=out)


def exp_decay(log_decay: np.ndarray) -> np.ndarray:
    """exp(log_decay) in place, with anything below exp(-60) flushed to exactly 0."""
    np.copyto(log_decay, np.float32(-np.inf), where=log_decay < _LOG_DECAY_FLOOR)
    return np.exp(log_decay, out=log_decay)


def decay_rates(a_log: np.ndarray) -> np.ndarray:
    """A = -exp(A_log) [H]: each head's (negative, finite) continuous decay rate."""
    return -np.exp(np.minimum(a_log.astype(np.float32), _MAX_LOG_DECAY_RATE))


def time_steps(dt: np.ndarray, dt_bias: np.ndarray, limit: tuple[float, float]) -> np.ndarray:
    """dt [T, H] = clamp(softplus(dt + dt_bias), *limit): stable softplus, float32."""
    out = softplus(dt + dt_bias)
    lo, hi = limit
    if lo > 0.0 or hi != np.inf:  # softplus is already >= 0, so the default (0, inf) is a no-op
        np.clip(out, np.float32(lo), np.float32(hi), out=out)
    return out


def state_shape(heads: int, head_dim: int, groups: int, d_state: int) -> tuple[int, int, int]:
    """The SSM state's layout, [G, N, H/G * P]: per group, one row per state dimension over
    the group's heads' channels. Per-head decays then scale long contiguous rows (NumPy's
    broadcasting loops are slow over short ones), and the readouts (``C @ state``) and the
    additions of new steps (``B^T @ (dt x)``) are plain matrix products."""
    return groups, d_state, heads // groups * head_dim


# decoding steps kept aside before they are folded into the state (see PendingSteps; the
# mamba2 block's tunable option pending_window): each costs a little more readout per token,
# each fold one pass over the state
PENDING_WINDOW = 32


class PendingSteps:
    """Decoding steps not yet folded into the SSM state: the last k tokens' B and dt*x, and the
    log decays that separate them (and the folded state) from the latest token.

    Updating the whole [G, N, H/G * P] state for every token takes three passes over it (decay,
    rank-one product, add) besides the readout; keeping up to ``window`` steps aside and
    folding them in with one matrix product, as the chunked scan does per chunk, leaves one
    pass (the readout) per token.
    """

    def __init__(self, window: int, heads: int, head_dim: int, groups: int, d_state: int):
        self.b = np.empty((window, groups, d_state), np.float32)
        self.dtx = np.empty((window, heads, head_dim), np.float32)
        # log decay from each pending step to the latest one (sums over the segment, like the
        # scan: never differences), and from the folded state to the latest one
        self.log_decay = np.empty((window, heads), np.float32)
        self.base_log_decay = np.zeros(heads, np.float32)
        self.count = 0

    def nbytes(self) -> int:
        """Bytes held by the buffers."""
        return self.b.nbytes + self.dtx.nbytes + self.log_decay.nbytes + self.base_log_decay.nbytes


def fold_pending(state: np.ndarray, pending: PendingSteps) -> None:
    """Fold the pending steps into ``state`` [G, N, H/G * P] (in place) and empty them."""
    k = pending.count
    if k == 0:
        return
    g = state.shape[0]
    h, p = pending.dtx.shape[1:]
    state *= np.repeat(exp_decay(pending.base_log_decay.copy()), p).reshape(g, 1, -1)
    decay = exp_decay(pending.log_decay[:k].copy())  # [k, H]
    weighted = (pending.dtx[:k] * decay[:, :, None]).reshape(k, g, -1).transpose(1, 0, 2)
    state += pending.b[:k].transpose(1, 2, 0) @ weighted  # [G, N, k] @ [G, k, H/G * P]
    pending.base_log_decay.fill(0.0)
    pending.count = 0


def ssd_step(x: np.ndarray, dt: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray,
             state: np.ndarray, pending: PendingSteps) -> np.ndarray:
    """One step of the recurrence for every head at once.

    ``x`` [H, P], ``dt`` [H] (already softplus'd), ``a`` [H] (= A), ``b``/``c`` [G, N];
    ``state`` [G, N, H/G * P] (see :func:`state_shape`) and ``pending`` together hold the
    state before the step and are updated to the state after it. Returns y [H, P] without the
    D skip: the folded state's readout, decayed, plus each pending step's contribution::

        y = decay(base -> now) * (C @ state) + sum_j decay(j -> now) * (C . B_j) * dt_j x_j
    """
    if pending.count == pending.b.shape[0]:
        fold_pending(state, pending)
    k = pending.count
    h, p = x.shape
    g = b.shape[0]
    la = step_log_decay(dt, a)  # [H]
    pending.log_decay[:k] += la
    pending.log_decay[k] = 0.0
    pending.base_log_decay += la
    pending.b[k] = b
    np.multiply(x, dt[:, None], out=pending.dtx[k])
    pending.count = k = k + 1

    y = (c[:, None, :] @ state).reshape(h, p)  # [G, 1, N] @ [G, N, H/G * P]
    y *= exp_decay(pending.base_log_decay.copy())[:, None]
    coef = exp_decay(pending.log_decay[:k].copy())  # [k, H]
    grouped = coef.reshape(k, g, -1)
    c_dot_b = np.einsum("kgn,gn->kg", pending.b[:k], c)  # [k, G]: C . B_j
    np.multiply(grouped, c_dot_b[:, :, None], out=grouped)
    y += (coef.T[:, None, :] @ pending.dtx[:k].transpose(1, 0, 2)).reshape(h, p)  # [H, 1, k] @ [H, k, P]
    return y


def ssd_chunked(x: np.ndarray, dt: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray,
                state: np.ndarray, chunk_size: int, fresh: bool = False) -> np.ndarray:
    """The recurrence over a whole sequence with the chunked SSD algorithm.

    ``x`` [T, H, P], ``dt`` [T, H] (already softplus'd), ``a`` [H], ``b``/``c`` [T, G, N],
    ``state`` [G, N, H/G * P]: the state before the first step, updated in place to the state
    after the last. Any T >= 1; the last chunk may be shorter than ``chunk_size``. Returns y
    [T, H, P] without the D skip. Per chunk of length l, with s <= t positions in it:

    1. within the chunk: y[t] += sum_s decay(s -> t) * (C[t] . B[s]) * dt[s] x[s]  (an
       attention-like [l, l] matrix per head, times the inputs);
    2. the chunk's own state at its end: sum_s decay(s -> end) * dt[s] x[s] outer B[s];
    3. across chunks: state(end) = decay(start -> end) * state(start) + step 2;
    4. the carried-in state seen from inside: y[t] += decay(start -> t) * state(start) @ C[t].

    decay(s -> t) = exp(sum of dt*A over the steps s+1..t) is built from sums over each
    segment (never differences of running sums), so it stays exact and finite for any dt.
    """
    t_total, h, p = x.shape
    g, n = b.shape[1:]
    hpg = h // g
    y = np.empty((t_total, h, p), np.float32)
    log_decay = step_log_decay(dt, a)  # [T, H]: log of each step's decay factor (<= 0)
    dtx = x * dt[:, :, None]  # [T, H, P]
    size = min(chunk_size, t_total)
    causal = np.tri(size, size, 0, dtype=np.float32)  # [t, s]: 1 where t >= s
    # [t, H, s] layout, reused by every chunk: row t of the segment sums is row t-1 plus one
    # step, added over whole rows. Above the diagonal it stays 0 (the causal mask zeroes it
    # after exp); the diagonal is reset to 0 for each chunk.
    seg = np.zeros((size, h, size), np.float32)
    for t0 in range(0, t_total, chunk_size):
        t1 = min(t_total, t0 + chunk_size)
        l = t1 - t0
        la = log_decay[t0:t1]  # [l, H]
        xc = dtx[t0:t1]  # [l, H, P]
        bc = b[t0:t1].transpose(1, 0, 2)  # [G, l, N]
        cc = c[t0:t1].transpose(1, 0, 2)  # [G, l, N]

        # decay[t, h, s] = exp(la[s+1, h] + ... + la[t, h]); 1 where s >= t (masked below)
        decay = seg[:l, :, :l]
        np.einsum("tht->th", decay)[...] = 0.0  # a writable view of the diagonal
        for t in range(1, l):
            np.add(decay[t - 1, :, :t], la[t, :, None], out=decay[t, :, :t])
        exp_decay(decay)
        to_end = decay[l - 1].T.copy()  # [l(s), H]: decay(s -> chunk end)
        from_start = exp_decay(np.cumsum(la, axis=0))  # [l, H]: decay(chunk start -> t)

        # 1. within the chunk: (decay * C B^T, causal) @ dt x
        scores = cc @ bc.transpose(0, 2, 1)  # [G, l(t), l(s)]
        scores *= causal[:l, :l]
        grouped = decay.reshape(l, g, hpg, l)
        np.multiply(grouped, scores.transpose(1, 0, 2)[:, :, None, :], out=grouped)
        yc = y[t0:t1]  # [l, H, P], written through its [H, l, P] view
        np.matmul(decay.transpose(1, 0, 2), xc.transpose(1, 0, 2), out=yc.transpose(1, 0, 2))

        # 4. the state carried in from earlier chunks, read out by C and decayed to each t
        zero_state = fresh and t0 == 0
        if not zero_state:
            carried = cc @ state  # [G, l, N] @ [G, N, H/G * P] -> [G, l, H/G * P]
            carried = carried.transpose(1, 0, 2).reshape(l, h, p)
            carried *= from_start[:, :, None]
            yc += carried

        # 2. this chunk's own contribution to the state at its end: B^T @ (dt x * decay)
        weighted = (xc * to_end[:, :, None]).reshape(l, g, hpg * p).transpose(1, 0, 2)
        b_t = bc.transpose(0, 2, 1)  # [G, N, l] @ [G, l, H/G * P] -> [G, N, H/G * P]

        # 3. carry the state across the chunk: decay it and add 2 (a zero state becomes 2)
        if zero_state:
            np.matmul(b_t, weighted, out=state)
        else:
            state *= np.repeat(from_start[-1], p).reshape(g, 1, -1)
            state += b_t @ weighted
    return y


def _group_rms_norm(x: np.ndarray, groups: int, eps: float) -> None:
    """x [T, D] divided in place by the root mean square of each of its groups of D/groups
    channels (plus ``eps``)."""
    t, d = x.shape
    grouped = x.reshape(t, groups, d // groups)  # a view: x is contiguous
    ms = np.einsum("tgd,tgd->tg", grouped, grouped)[:, :, None]  # sums of squares, no temporary
    ms *= np.float32(groups / d)
    ms += np.float32(eps)
    np.sqrt(ms, out=ms)
    grouped *= np.float32(1.0) / ms  # times the reciprocal root, as the reference does


def gated_rms_norm(y: np.ndarray, z: np.ndarray, weight: np.ndarray, groups: int,
                   eps: float, norm_first: bool = False) -> np.ndarray:
    """rmsnorm(y * silu(z)) per group of D/groups channels, times ``weight`` [D]; a new array.

    ``y``, ``z`` [T, D]. The gate comes before the norm (Mamba2's norm_before_gate=False, as
    Granite 4.0-H, Bamba and transformers' Mamba2 have it); with ``norm_first`` the result is
    rmsnorm(y) * weight * silu(z) instead (Falcon-H1's mamba_norm_before_gate).
    """
    gate = silu(z)  # [T, D], a new array
    if norm_first:
        out = np.array(y, dtype=np.float32)  # a copy to normalise in place
        _group_rms_norm(out, groups, eps)
        out *= weight
        out *= gate
        return out
    gate *= y
    _group_rms_norm(gate, groups, eps)
    gate *= weight
    return gate


def gated(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """y * silu(z) without a norm (Falcon-H1 with mamba_rms_norm false); a new array."""
    out = silu(z)
    out *= y
    return out
