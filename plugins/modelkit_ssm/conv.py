"""The causal depthwise convolution over time that both mixers of this plugin run.

Each channel has its own K taps; output t reads inputs t-K+1..t, so a token never sees later
ones. A block keeps the K-1 inputs before the current call as its history (zeros at the start of
a sequence), which makes a prompt cut in pieces, or decoded one token at a time, equal one call
over the whole. (The granite plugin's Mamba2 has the same function: plugins share only what
``modelkit`` exports.)
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def causal_conv(x: np.ndarray, history: np.ndarray, weight_t: np.ndarray,
                bias: np.ndarray | None) -> np.ndarray:
    """Causal depthwise convolution of ``x`` [T, C], continuing from ``history``.

    ``history`` [K-1, C]: the K-1 inputs before ``x``, oldest first, overwritten in place with
    the last K-1 inputs (of ``history`` followed by ``x``); ``weight_t`` [K, C]: tap k
    multiplies the input K-1-k steps back (the checkpoint's [C, 1, K] reshaped and transposed);
    ``bias`` [C] or None. Returns [T, C], before any activation.
    """
    t = x.shape[0]
    k = weight_t.shape[0]
    padded = np.concatenate([history, x], axis=0)  # [K-1+T, C]
    if t == 1:  # decoding: the padded rows are the one window
        out = np.einsum("kc,kc->c", padded, weight_t)[None]
    else:  # one pass over a view of every window (row t = inputs t..t+K-1), no per-tap loop
        windows = sliding_window_view(padded, k, axis=0)  # [T, C, K]
        out = np.einsum("tck,kc->tc", windows, weight_t)
    if bias is not None:
        out += bias
    if k > 1:
        history[:] = padded[t:]
    return out
