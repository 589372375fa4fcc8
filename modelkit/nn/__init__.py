"""NumPy blocks, and the pieces plugins build their own blocks from.

Everything a plugin's block kind needs is exported here (and again from ``modelkit``): the
:class:`Block` contract, :class:`Option` and :class:`ParamSpec` declarations, the product
with a PyTorch-layout weight, the activations, the norms and the core's MLPs.
"""

from .activations import ACTIVATIONS, gelu, gelu_tanh, relu, sigmoid, silu, softplus
from .block import Block, ForwardContext, ParamSpec
from .conv import causal_conv
from .linear import linear, product_layout, widen
from .mlp import MLP, GatedMLP
from .norms import LayerNorm, RMSNorm, layer_norm, rms_norm
from .options import REQUIRED, Option

__all__ = ["ACTIVATIONS", "Block", "ForwardContext", "GatedMLP", "LayerNorm", "MLP", "Option",
           "ParamSpec", "REQUIRED", "RMSNorm", "causal_conv", "gelu", "gelu_tanh", "layer_norm", "linear",
           "product_layout", "relu", "rms_norm", "sigmoid", "silu", "softplus", "widen"]
