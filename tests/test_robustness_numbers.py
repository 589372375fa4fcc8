"""Numbers that pass for valid but break the maths, and memory that runs out.

- config values float32 cannot hold, divisors it rounds to zero or a subnormal, and integers
  past 2**31 - 1 are refused at planning, with the key named (library and CLI alike);
- a NaN or infinite logit stops generation with where it began: non-finite weights of a named
  block, or an overflow of float32 in a named block's arithmetic, and no NumPy warning
  reaches the terminal;
- running out of memory says what was being allocated (a tensor, a block of a layer, the
  KV cache, the embedding), checked in subprocesses capped with RLIMIT_AS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import ROOT, cli_env, copy_fixture, edit_config, fixture_path, max_abs, read_tensors, write_tensors

import modelkit
from modelkit.cli import main as cli_main

F32_MAX = "which float32 cannot hold"
SUBNORMAL = "which float32 rounds to zero or a subnormal"

# fixture, config.json changes, the words of the error
REFUSED = [
    ("mistral_window", {"sliding_window": 2 ** 63}, "layers.blocks.attn.window must be at most 2,147,483,647"),
    ("gemma2", {"sliding_window": 2 ** 40}, "window must be at most 2,147,483,647"),
    ("llama_gqa", {"vocab_size": 2 ** 40}, "vocab_size must be at most 2,147,483,647"),
    ("llama_gqa", {"head_dim": 2 ** 33}, "head_dim must be at most 2,147,483,647"),
    ("gpt2", {"n_positions": 2 ** 35}, "max_positions (at most 2,147,483,647)"),
    ("llama_linear_rope", {"rope_parameters": {"rope_type": "linear", "factor": 1e-300, "rope_theta": 2e4}},
     f"rope scaling linear: 'factor' is 1e-300, {SUBNORMAL}"),
    ("llama_linear_rope", {"rope_parameters": {"rope_type": "linear", "factor": 10 ** 400, "rope_theta": 2e4}},
     f"'factor' is 10000000... (401 digits), {F32_MAX}"),
    ("llama_gqa", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e39}}, f"rope_theta is 1e+39, {F32_MAX}"),
    ("llama_gqa", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e-300}}, "rope_theta must be at least 1"),
    ("llama3_rope_headdim", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 1e-39,
                                                 "rope_theta": 1e4}},
     f"'original_max_position_embeddings' is 1e-39, {SUBNORMAL}"),
    ("granite3", {"embedding_multiplier": 1e39}, f"embedding_multiplier is 1e+39, {F32_MAX}"),
    ("granite3", {"residual_multiplier": -5e38}, f"residual_multiplier is -5e+38, {F32_MAX}"),
    ("granite3", {"attention_multiplier": 1e39}, f"layers.blocks.attn.scale is 1e+39, {F32_MAX}"),
    ("granite3", {"logits_scaling": 1e-39}, f"logits_divisor is 1e-39, {SUBNORMAL}"),
    ("granite3", {"rms_norm_eps": 1e39}, f"eps is 1e+39, {F32_MAX}"),
    ("gemma2", {"final_logit_softcapping": 1e-39}, f"logits_softcap is 1e-39, {SUBNORMAL}"),
    ("falcon_h1", {"key_multiplier": 2.5e39},  # times attention_in_multiplier, 0.8
     f"weights.layers.{{i}}.attn.k.weight.scale.factor is 2.0000000000000002e+39, {F32_MAX}"),
    ("falcon_h1", {"ssm_multipliers": [0.5, 1.5, 1e39, 1.25, 0.7]}, f"scale_segments.factors is 1e+39, {F32_MAX}"),
    ("gh_hybrid", {"time_step_limit": [0.0, 1e39]}, f"time_step_limit is 1e+39, {F32_MAX}"),
]


@pytest.mark.parametrize("fixture,changes,needle", REFUSED, ids=[f"{f}-{next(iter(c))}" for f, c, _ in REFUSED])
def test_numbers_float32_or_int32_cannot_hold_are_refused_at_planning(
        tmp_path: Path, capsys: pytest.CaptureFixture, fixture: str, changes: dict[str, Any], needle: str) -> None:
    folder = copy_fixture(fixture, tmp_path / "m")
    edit_config(folder, **changes)
    with pytest.raises(modelkit.ConfigError) as info:
        modelkit.inspect(folder)[0].close()  # planning reads no tensor data
    message = str(info.value)
    assert needle in message and "\n" not in message and str(folder / "config.json") in message, message
    # the CLI: one line, the same words
    assert cli_main(["validate", "--model", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"modelkit: error: {message}\n"


def test_a_window_longer_than_any_sequence_allocates_nothing_for_it(tmp_path: Path) -> None:
    """2**31 - 1 is allowed (it is no window at all): the same logits as no window, and a cache
    that grows with the sequence, never with the window."""
    huge = copy_fixture("mistral_window", tmp_path / "huge")
    edit_config(huge, sliding_window=2 ** 31 - 1)
    none = copy_fixture("mistral_window", tmp_path / "none")
    edit_config(none, sliding_window=None)
    ids = list(range(1, 40))
    a, b = modelkit.load(huge), modelkit.load(none)
    cache = a.make_cache()
    assert max_abs(a.forward(ids, cache), b.forward(ids)) < 1e-5
    assert a.generate(ids, 5) == b.generate(ids, 5)
    assert cache.nbytes() < 1 << 20
