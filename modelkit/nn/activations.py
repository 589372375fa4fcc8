"""Activation functions over float32 arrays, by the names checkpoints use."""

from __future__ import annotations

from typing import Callable

import numpy as np

_SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))
_INV_SQRT_2 = np.float32(1.0 / np.sqrt(2.0))


def erf(x: np.ndarray) -> np.ndarray:
    """Error function to float32 precision (fractional error of erfc < 1.2e-7 everywhere).

    NumPy has no erf and SciPy is not a dependency; this is the Chebyshev fit of erfc from
    Numerical Recipes, which is all exact GELU needs.
    """
    a = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * a)
    poly = -a * a - np.float32(1.26551223) + t * (np.float32(1.00002368) + t * (np.float32(0.37409196) + t * (
        np.float32(0.09678418) + t * (np.float32(-0.18628806) + t * (np.float32(0.27886807) + t * (
            np.float32(-1.13520398) + t * (np.float32(1.48851587) + t * (
                np.float32(-0.82215223) + t * np.float32(0.17087277)))))))))
    erfc = t * np.exp(poly)
    return np.sign(x) * (np.float32(1.0) - erfc)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU: x * Phi(x)."""
    return x * np.float32(0.5) * (np.float32(1.0) + erf(x * _INV_SQRT_2))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """Tanh-approximated GELU (GPT-2's gelu_new, gelu_pytorch_tanh)."""
    return np.float32(0.5) * x * (np.float32(1.0) + np.tanh(_SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid, stable for large |x| (exp never overflows)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


def silu(x: np.ndarray) -> np.ndarray:
    """SiLU / swish: x * sigmoid(x) = x / (1 + exp(-x)), in five passes over two new arrays.
    x is held at -88 or above, so exp never overflows and no error state has to be set around
    it: that context, after a token's weights have flushed the caches, cost more than the
    arithmetic (a decoding step's SiLU of 1536 values: 28 against 40 us). Below -88 the result
    is -88 / (1 + e^88), -5e-37, where the exact one is smaller still."""
    s = np.maximum(x, np.float32(-88.0))
    t = np.negative(s)
    np.exp(t, out=t)
    t += np.float32(1.0)
    return np.divide(s, t, out=t)


def relu(x: np.ndarray) -> np.ndarray:
    """max(x, 0)."""
    return np.maximum(x, np.float32(0.0))


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) computed stably: never overflows for large x, exact for small."""
    return np.maximum(x, np.float32(0.0)) + np.log1p(np.exp(-np.abs(x)))


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "gelu": gelu,
    "gelu_exact": gelu,
    "gelu_new": gelu_tanh,
    "gelu_tanh": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_fast": gelu_tanh,
    "silu": silu,
    "swish": silu,
    "relu": relu,
}
