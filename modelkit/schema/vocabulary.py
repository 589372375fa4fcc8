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
    "attn_residual_norm": "a norm of the residual stream right after the mixer's branch is added (post-norm)",
    "mlp_residual_norm": "a norm of the residual stream right after the feed-forward branch is added (post-norm)",
}

# model-level tensors besides final_norm.<parameter> and embed_norm.<parameter>
MODEL_TENSORS: dict[str, str] = {
    "embed.weight": "token embedding [vocab, embed_dim] (embed_dim is hidden_size unless the model says)",
    "embed_proj.weight": "projection of the embedding to the hidden width [hidden, embed_dim] (when they differ)",
    "pos_embed.weight": "learned position embedding [positions, hidden]",
    "head_proj.weight": "projection of the final hidden states to the head's width [embed_dim, hidden] "
                        "(when they differ)",
    "head.weight": "output projection [vocab, embed_dim] (absent when tied to the embedding)",
    "head.bias": "output bias [vocab]",
}

# config.json keys that never change an inference forward pass in float32, in any family:
# training settings, token ids (read by the tokenizer and generation, not the mapping), the
# serialisation's own bookkeeping. A mapping's own harmless keys go under its ``inert_config``;
# every other key is read by a field (and honoured or refused by a check). docs/mappings.md
# explains; ``modelkit validate`` names the keys of a checkpoint that fit none of these.
INERT_CONFIG_KEYS: dict[str, str] = {
    **dict.fromkeys(
        ("_name_or_path", "transformers_version", "model_type", "architectures", "dtype", "torch_dtype",
         "_attn_implementation_autoset", "torchscript", "return_dict", "output_hidden_states",
         "output_attentions", "use_return_dict", "pruned_heads", "chunk_size_feed_forward",
         "tie_encoder_decoder", "is_encoder_decoder", "is_decoder", "add_cross_attention",
         "cross_attention_hidden_size", "finetuning_task", "id2label", "label2id", "problem_type",
         "task_specific_params", "tokenizer_class", "prefix"),
        "serialisation bookkeeping"),
    **dict.fromkeys(
        ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id"),
        "token ids: read from the tokenizer and generation config"),
    **dict.fromkeys(
        ("use_cache", "initializer_range", "init_std", "attention_dropout", "hidden_dropout",
         "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout", "embedding_dropout", "residual_dropout",
         "classifier_dropout", "layerdrop", "summary_type", "summary_use_proj", "summary_activation",
         "summary_proj_to_labels", "summary_first_dropout", "pretraining_tp", "output_router_logits",
         "router_aux_loss_coef", "router_jitter_noise"),
        "training only, or a switch of the reference implementation that modelkit always takes"),
}
