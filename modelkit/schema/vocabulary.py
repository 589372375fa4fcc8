"""The canonical vocabulary: the names every mapping gives blocks and model-level tensors.

As llama.cpp names every tensor from one list (``MODEL_TENSOR``), every modelkit mapping names
its blocks from this one, so a parameter means the same thing in every architecture
(``layers.3.attn.q.weight`` is a query projection wherever it appears) and a checkpoint can be
converted between layouts by contract. Parameter names inside a block are the block kind's own
(its ``PARAMETERS``). docs/mappings.md lists these names; a test keeps it complete.
"""

from __future__ import annotations

# block name -> what it is, in the order a layer usually runs them
BLOCK_NAMES: dict[str, str] = {
    "attn_norm": "the norm before the layer's token mixer (attention, SSM or convolution)",
    "attn": "self-attention",
    "ssm": "a state-space mixer (Mamba2, Mamba)",
    "conv": "a short-convolution mixer (LFM2)",
    "post_attn_norm": "a norm of the mixer's output before the residual add",
    "mlp_norm": "the norm before the feed-forward block",
    "mlp": "the feed-forward block (dense, gated, or with routed experts)",
    "post_mlp_norm": "a norm of the feed-forward output before the residual add",
}

# model-level tensors besides final_norm.<parameter>
MODEL_TENSORS: dict[str, str] = {
    "embed.weight": "token embedding [vocab, hidden]",
    "pos_embed.weight": "learned position embedding [positions, hidden]",
    "head.weight": "output projection [vocab, hidden] (absent when tied to the embedding)",
    "head.bias": "output bias [vocab]",
}
