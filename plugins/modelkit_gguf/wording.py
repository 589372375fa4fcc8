"""Plain words for what `modelkit convert` cannot write, in either direction.

A refusal names the tensor as the user knows it (its name in the file or folder being
written) and says what it is and in which form it would have to be stored, without the
mappings' transform names or canonical paths.
"""

from __future__ import annotations

from modelkit import PLACEHOLDER

# a canonical parameter's local name (without ``layers.N.``) -> what it is
TENSORS = {
    "attn.q.weight": "query, key and value weights", "attn.k.weight": "query, key and value weights",
    "attn.v.weight": "query, key and value weights", "attn.q.bias": "query, key and value biases",
    "attn.k.bias": "query, key and value biases", "attn.v.bias": "query, key and value biases",
    "attn.o.weight": "attention output projection",
    "mlp.gate.weight": "MLP gate and up projections", "mlp.up.weight": "MLP gate and up projections",
    "mlp.down.weight": "MLP down projection",
    "mlp.experts.gate.weight": "experts' gate and up projections",
    "mlp.experts.up.weight": "experts' gate and up projections",
    "mlp.experts.down.weight": "experts' down projections", "mlp.router.weight": "expert router",
    "ssm.conv.weight": "Mamba convolution weight", "ssm.conv.bias": "Mamba convolution bias",
    "ssm.in_proj.weight": "Mamba input projection", "ssm.A_log": "Mamba decay (A)",
    "ssm.norm.weight": "Mamba gated norm", "conv.conv.weight": "short convolution weight",
    "conv.in_proj.weight": "short convolution input projection", "embed.weight": "token embedding", "head.weight": "output head",
}
# a transform a mapping applies on loading -> the form the tensor is stored in
FORMS = {
    "falcon_qkv": "fused into one query/key/value tensor, interleaved per group of heads",
    "split": "fused into one tensor",
    "slice": "fused into one tensor",
    "transpose": "transposed",
    "reshape": "in another shape",
    "unpermute_rope": "with its rows permuted per head",
    "scale": "scaled",
    "add": "offset by a setting of the model",
    "undo_neg_exp": "as -exp of the value",
}
# canonical block names -> what they are
BLOCKS = {"attn": "attention", "mlp": "MLP", "ssm": "Mamba mixer", "input_norm": "input norm",
          "post_attn_norm": "post-attention norm", "final_norm": "final norm", "embed_norm": "embedding norm"}


def local_name(canonical: str) -> str:
    """``layers.3.attn.q.weight`` -> ``attn.q.weight``; others as they are."""
    parts = canonical.split(".")
    return ".".join(parts[2:]) if parts[0] == "layers" and len(parts) > 2 else canonical


def tensor_words(canonical: str) -> str:
    """What a canonical parameter is, in words (its local name when there are none)."""
    local = local_name(canonical).replace(PLACEHOLDER, "N")
    return TENSORS.get(local, f"tensor '{local}'")


def form_words(transforms: list[str]) -> str:
    """The stored form a list of transforms (applied on loading) undoes, in words."""
    words = []
    for name in transforms:
        word = FORMS.get(name, "in a form of its own")
        if word not in words:
            words.append(word)
    return " and ".join(words)


def block_words(name: str) -> str:
    """A block's name as a reader knows it (``attn`` -> ``attention``)."""
    return BLOCKS.get(name, name.replace("_", " "))

