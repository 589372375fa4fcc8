"""Mamba (v1) selective state-space math over float32 NumPy arrays, as pure functions.

Shapes: T time steps, D channels (d_inner), N state dimensions per channel (d_state).

The recurrence, per channel d and state dimension n::

    h[d, n] = exp(dt[d] * A[d, n]) * h[d, n] + dt[d] * x[d] * B[n]
    y[d]    = sum_n C[n] * h[d, n]

with ``A = -exp(A_log)`` [D, N]: a decay rate for every channel *and* state dimension (Mamba2's
is one number per head), and ``dt`` [D], ``B``, ``C`` [N] chosen by the token (the "selective"
part). The block adds the skip ``D * x`` and the gate ``silu(z)``.

Layout: the state and A are stored transposed, [N, D] (``state[n, d]`` is ``h[d, n]``), so every
broadcast product runs along D (hundreds to thousands of contiguous numbers) rather than N (16):
on the mamba-130m shape that made the products over a chunk 2-2.5x faster than in [D, N].

:func:`selective_scan` runs a whole prompt, :func:`selective_step` one decoded token; both
continue from a given state and leave the final state in it, so a prompt may arrive in pieces
and decoding picks up where prefill stopped.
"""

from __future__ import annotations

import numpy as np

# exp() of anything above this overflows float32; A_log is capped here so A stays finite (an
# infinite A times a zero time step would be NaN instead of "no decay")
_MAX_LOG_DECAY_RATE = np.float32(88.0)


def decay_rates(a_log: np.ndarray) -> np.ndarray:
    """A = -exp(A_log), from the checkpoint's [D, N] to the scan's [N, D] layout (negative, finite)."""
    a = -np.exp(np.minimum(a_log.astype(np.float32), _MAX_LOG_DECAY_RATE))
    return np.ascontiguousarray(a.T)


# floats in each of the scan's two [l, N, D] chunk buffers (1 MB): chunks of about this size ran
# about 1.5x faster than 64-step ones on the mamba-130m shape (N * D = 24576 floats per step), whose
# buffers (12 MB) fell out of cache between the passes
CHUNK_FLOATS = 1 << 18


def chunk_length(max_steps: int, d_inner: int, d_state: int) -> int:
    """Steps per chunk of :func:`selective_scan`: at most ``max_steps``, and few enough that a
    chunk's [l, N, D] buffers hold about :data:`CHUNK_FLOATS` floats each (at least one step)."""
    return max(1, min(max_steps, CHUNK_FLOATS // (d_inner * d_state)))


def selective_scan(x: np.ndarray, dt: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray,
                   state: np.ndarray, chunk_size: int, fresh: bool = False) -> np.ndarray:
    """The recurrence over a whole sequence, ``chunk_size`` steps per batch of array work.

    ``x``, ``dt`` [T, D] (dt already softplus'd, >= 0); ``a`` [N, D] (= A, transposed);
    ``b``, ``c`` [T, N]; ``state`` [N, D]: the state before the first step, updated in place
    to the state after the last (with ``fresh`` it is taken as zeros and never read). Returns
    y [T, D] without the D skip and the gate. Per chunk of l steps:

    1. every step's decay, ``exp(dt * A)`` [l, N, D], in one pass;
    2. every step's input, ``outer(B, dt * x)`` [l, N, D], in one pass;
    3. the recurrence itself, one step at a time over whole [N, D] states: two in-place passes
       per step (decay the previous state, add the input), which turn the inputs of 2 into the
       state after each step;
    4. every state's readout at once, ``y[t] = C[t] @ h[t]``, one batched product.

    Why a loop over steps: A differs per state dimension, so unlike Mamba2's SSD there is no
    matrix-product form, and every exact formulation computes the T*D*N decays of 1, NumPy's
    float32 exp being the largest single cost. The loop adds two passes per step over a state
    that stays in cache. The parallel forms measured slower on the mamba-130m shape (docs/ssm.md):
    a two-level scan (local scans vectorised over chunks, then a carry) 2.7-4x, and the
    cumulative-log-decay form ``h[t] = exp(L[t]) * cumsum(exp(-L) * input)`` 4-5x; that form also
    overflows once a chunk's summed log decay passes -88, so its chunks would have to be cut to
    the data. Short chunks are the fastest (the buffers stay in cache): see :func:`chunk_length`.

    The decays are products of a finite A (A_log is capped) and a finite dt >= 0, so they lie
    in [0, 1]: a huge dt * |A| gives a decay of 0 (the state is forgotten), never NaN, and no
    quantity here is ever divided by a decay. Decays from exp(-104) to exp(-87) are subnormal
    floats; each meets one multiplication here (Mamba2's scan floors them because there they
    multiply whole score matrices), so they are left as they are.
    """
    t_total, d = x.shape
    n = b.shape[1]
    y = np.empty((t_total, d), np.float32)
    dtx = dt * x  # [T, D]
    size = min(chunk_size, t_total)
    decay = np.empty((size, n, d), np.float32)  # reused by every chunk
    states = np.empty((size, n, d), np.float32)
    prev = None if fresh else state
    for t0 in range(0, t_total, chunk_size):
        t1 = min(t_total, t0 + chunk_size)
        l = t1 - t0
        dec, hs = decay[:l], states[:l]
        # 1. decays: exp(dt * A), [l, 1, D] * [N, D] -> [l, N, D] (an overflow is -inf: decay 0)
        with np.errstate(over="ignore"):
            np.multiply(dt[t0:t1, None, :], a, out=dec)
        np.exp(dec, out=dec)
        # 2. inputs: B outer dt x, [l, N, 1] * [l, 1, D] -> [l, N, D]
        np.multiply(b[t0:t1, :, None], dtx[t0:t1, None, :], out=hs)
        # 3. h[j] = decay[j] * h[j-1] + input[j], in place over the inputs
        for j in range(l):
            if prev is not None:
                np.multiply(dec[j], prev, out=dec[j])
                hs[j] += dec[j]
            prev = hs[j]
        # 4. readout: [l, 1, N] @ [l, N, D] -> [l, 1, D]
        np.matmul(c[t0:t1, None, :], hs, out=y[t0:t1, None, :])
        state[...] = prev  # the buffers are overwritten by the next chunk
        prev = state
    return y


def selective_step(x: np.ndarray, dt: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray,
                   state: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """One step of the recurrence for every channel at once.

    ``x``, ``dt`` [D] (dt already softplus'd); ``a`` [N, D]; ``b``, ``c`` [N]; ``state`` [N, D]
    updated in place to the state after the step; ``scratch`` [N, D] a work buffer (so a token
    allocates nothing state-sized). Returns y [D] without the D skip and the gate. Unlike
    Mamba2's decoding there is nothing to gain from keeping steps pending: the decay differs
    per state element, so a readout would pass over the whole decayed state anyway.
    """
    with np.errstate(over="ignore"):  # an overflow is -inf: a decay of exactly 0
        np.multiply(a, dt, out=scratch)  # [N, D] * [D]
    np.exp(scratch, out=scratch)
    state *= scratch
    np.multiply(b[:, None], dt * x, out=scratch)  # B outer dt x
    state += scratch
    return c @ state  # [N] @ [N, D] -> [D]
