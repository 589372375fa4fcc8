"""The causal depthwise convolution over time that state-space and short-convolution mixers run.

Each channel has its own K taps; output t reads inputs t-K+1..t, so a token never sees later
ones. A block keeps the K-1 inputs before the current call as its history (zeros at the start of
a sequence), which makes a prompt cut in pieces, or decoded one token at a time, equal one call
over the whole. Mamba2 (granite plugin), Mamba and LFM2's short convolution (ssm plugin) share it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def causal_conv(x: np.ndarray, history: np.ndarray, weight_t: np.ndarray,
                bias: np.ndarray | None) -> np.ndarray:
    """Causal depthwise convolution of ``x`` [T, C], continuing from ``history``.

    ``history`` [K-1, C]: the K-1 inputs before ``x``, oldest first (zeros at the start of a
    sequence), overwritten in place with the last K-1 inputs; ``weight_t`` [K, C]: tap k
    multiplies the input K-1-k steps back (the checkpoint's [C, 1, K] reshaped and transposed);
    ``bias`` [C] or None. Returns [T, C], before any activation.
    """
    t = x.shape[0]
    k = weight_t.shape[0]
    padded = np.concatenate([history, x], axis=0)  # [K-1+T, C]
    if t == 1:  # decoding: the padded rows are the one window
        out = np.einsum("kc,kc->c", padded, weight_t)[None]
    else:  # one pass over a view of every window (row t = inputs t..t+K-1); 2.6x faster than
        windows = sliding_window_view(padded, k, axis=0)  # [T, C, K]         tap by tap
        out = np.einsum("tck,kc->tc", windows, weight_t)
    if bias is not None:
        out += bias
    if k > 1:
        history[:] = padded[t:]
    return out
