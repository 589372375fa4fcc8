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
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from conftest import ROOT, cli_env, copy_fixture, edit_config, fixture_path, max_abs, read_tensors, write_tensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


# ---- NaN and overflow in the arithmetic --------------------------------------------------------

def _with(tmp: Path, fixture: str, edit: Callable[[dict[str, np.ndarray]], None]) -> Path:
    tensors = read_tensors(fixture_path(fixture))
    edit(tensors)
    folder = copy_fixture(fixture, tmp / "m", weights=False)
    write_tensors(folder, tensors)
    return folder


def _fill(name: str, value: float, rows: slice = slice(None)) -> Callable[[dict[str, np.ndarray]], None]:
    def edit(t: dict[str, np.ndarray]) -> None:
        w = t[name].astype(np.float32)
        w[rows] = value
        t[name] = w
    return edit


def _both(*edits: Callable[[dict[str, np.ndarray]], None]) -> Callable[[dict[str, np.ndarray]], None]:
    return lambda t: [edit(t) for edit in edits] and None


def _residual_overflow(t: dict[str, np.ndarray]) -> None:
    # the attention block's output is exactly its o bias, 3e38, added to embeddings of 3e38
    t["model.embed_tokens.weight"] = np.full_like(t["model.embed_tokens.weight"], 3e38)
    t["model.layers.0.self_attn.o_proj.weight"] = np.zeros_like(t["model.layers.0.self_attn.o_proj.weight"])
    t["model.layers.0.self_attn.o_proj.bias"] = np.full_like(t["model.layers.0.self_attn.o_proj.bias"], 3e38)


DIAGNOSED = [
    ("llama_gqa", _fill("model.layers.0.mlp.up_proj.weight", np.nan, slice(0, 1)),
     "layer 0, block mlp (gated_mlp) has NaN or infinite weights (`modelkit validate --values`", False),
    ("llama_gqa", _fill("model.layers.1.mlp.down_proj.weight", 3e38),
     "the arithmetic overflowed float32 in layer 1, block mlp (gated_mlp): its inputs and weights are finite", True),
    ("llama_gqa", _both(_fill("model.layers.0.self_attn.q_proj.weight", 1e20),
                        _fill("model.layers.0.self_attn.k_proj.weight", 1e20)),
     "the arithmetic overflowed float32 in layer 0, block attn (attention)", True),
    ("llama_gqa", _fill("model.embed_tokens.weight", np.inf, slice(2, 3)),
     "the token embedding has NaN or infinite weights", False),
    ("llama_gqa", _fill("lm_head.weight", np.nan, slice(7, 8)), "the output head has NaN or infinite weights", False),
    ("llama_gqa", _fill("model.norm.weight", 3e38), "the arithmetic overflowed float32 in the final norm", True),
    ("llama_biases", _residual_overflow, "the residual stream overflowed float32 in layer 0", True),
]


@pytest.mark.parametrize("fixture,edit,needle,finite", DIAGNOSED, ids=[d[2].split(":")[0][:40] for d in DIAGNOSED])
def test_non_finite_logits_name_where_they_began(tmp_path: Path, capsys: pytest.CaptureFixture, fixture: str,
                                                 edit: Callable, needle: str, finite: bool) -> None:
    folder = _with(tmp_path, fixture, edit)
    model = modelkit.load(folder)
    for kwargs in ({}, {"temperature": 0.7, "top_p": 0.9, "seed": 1}, {"repetition_penalty": 1.3}):
        with pytest.raises(modelkit.GenerationError) as info:
            model.generate([1, 2, 3], 4, **kwargs)
        assert str(info.value).startswith("the model produced logits that are NaN or infinite")
        assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)
    # what validate --values says agrees: finite weights (an overflow) or the tensor listed
    code = cli_main(["validate", "--model", str(folder), "--values"])
    out, _ = capsys.readouterr()
    assert (code == 0 and "every value is finite" in out) if finite else (code == 1 and "non-finite" in out)


def test_an_overflow_prints_no_numpy_warning(tmp_path: Path) -> None:
    """Through the CLI, with every warning an error: one line on stderr, no RuntimeWarning."""
    # up as well as down: whether a sum of down's products alone overflows depends on the order
    # BLAS adds them in, which differs between a prompt's product and a token's
    folder = _with(tmp_path, "llama_gqa", _both(_fill("model.layers.1.mlp.up_proj.weight", 3e38),
                                                _fill("model.layers.1.mlp.down_proj.weight", 3e38)))
    proc = subprocess.run([sys.executable, "-W", "error", "-m", "modelkit", "run", "--model", str(folder),
                           "--prompt", "hi", "-n", "3"], capture_output=True, text=True, env=cli_env(),
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "overflowed float32 in layer 1, block mlp" in lines[0], proc.stderr
    assert "Warning" not in proc.stderr


def test_float64_weights_beyond_float32_load_quietly_and_are_listed(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    def edit(t: dict[str, np.ndarray]) -> None:
        w = t["model.layers.0.mlp.gate_proj.weight"].astype(np.float64)
        w[0, 0] = 1e300  # finite in the file, infinite once read as float32
        t["model.layers.0.mlp.gate_proj.weight"] = w

    folder = _with(tmp_path, "llama_gqa", edit)
    with np.errstate(all="raise"):  # nothing NumPy would warn about happens while loading
        model = modelkit.load(folder)
    with pytest.raises(modelkit.GenerationError, match="layer 0, block mlp .* has NaN or infinite weights"):
        model.generate([1, 2, 3], 2)
    assert cli_main(["validate", "--model", str(folder), "--values"]) == 1
    assert "model.layers.0.mlp.gate_proj.weight  (0 NaN, 1 infinite" in capsys.readouterr().out


# ---- out of memory: what was being allocated ---------------------------------------------------

CAPPED = """
import resource, sys
import numpy as np
import modelkit
from modelkit.nn.kv_cache import KVCache

def vm():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

def cap(extra):
    resource.setrlimit(resource.RLIMIT_AS, (vm() + extra, resource.RLIM_INFINITY))

{body}
"""


def _capped(body: str, timeout: float = 240) -> str:
    """stderr's last line of a Python process that caps its own address space and fails."""
    script = CAPPED.format(body=textwrap.dedent(body))
    env = {k: v for k, v in cli_env().items() if k != "RUST_BACKTRACE"}  # a backtrace needs memory too
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_out_of_memory_in_the_forward_pass_names_the_step() -> None:
    out = _capped(f"""
        model = modelkit.load({str(fixture_path("llama_gqa"))!r}, prefill_chunk=1 << 20)
        model.forward([1, 2, 3])  # warm: BLAS buffers exist before the cap
        ids = np.ones(1 << 20, np.int64)
        for extra in (64 << 20, 192 << 20):  # too little for the embedding; for the first block
            cap(extra)
            try:
                model.forward(ids)
            except modelkit.OutOfMemoryError as exc:
                assert isinstance(exc, MemoryError)
                print(exc)
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    """)
    first, second = out.splitlines()
    assert first.startswith("out of memory embedding 1,048,576 tokens (Unable to allocate 128."), first
    assert second.startswith("out of memory in layer 0, block "), second
    assert "on 1,048,576 tokens after 0 (Unable to allocate" in second, second


def test_out_of_memory_growing_the_kv_cache_says_so() -> None:
    out = _capped("""
        cache = KVCache(2, 8)
        k = np.ones((1 << 20, 2, 8), np.float32)
        cap(32 << 20)
        try:
            cache.append(k, k)
        except modelkit.OutOfMemoryError as exc:
            print(exc)
    """)
    assert out.startswith("out of memory growing the KV cache to 1,048,576 positions (134,217,728 bytes "
                          "for keys and values) (Unable to allocate"), out


def test_out_of_memory_while_loading_names_the_tensor(tmp_path: Path) -> None:
    folder = copy_fixture("llama_mqa_tied", tmp_path / "m", weights=False)
    cfg = json.loads((folder / "config.json").read_text())
    tensors = read_tensors(fixture_path("llama_mqa_tied"))
    vocab = 1 << 20  # a 64 MB bf16 embedding: 128 MB once float32
    tensors["model.embed_tokens.weight"] = np.zeros((vocab, cfg["hidden_size"]), np.float16)
    write_tensors(folder, tensors)
    edit_config(folder, vocab_size=vocab)
    out = _capped(f"""
        modelkit.load({str(fixture_path("llama_mqa_tied"))!r}).forward([1, 2])  # warm
        # room to map the file once (the safetensors library's map), or twice (modelkit's too), not to read it
        for extra in (100 << 20, 200 << 20):
            cap(extra)
            try:
                modelkit.load({str(folder)!r})
            except modelkit.OutOfMemoryError as exc:
                print(exc)
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    """)
    mapping, reading = out.splitlines()
    assert mapping.startswith("out of memory reading tensor embed.weight ("), mapping
    assert f", mapping {folder / 'model.safetensors'} (67," in mapping, mapping
    assert reading.startswith("out of memory reading tensor embed.weight (model.embed_tokens.weight, 1048576x32, "
                              "134,217,728 bytes as float32)"), reading


def test_the_cli_prints_what_ran_out(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import modelkit.loading

    for raised, want in [
        (modelkit.OutOfMemoryError("reading tensor embed.weight (x, 8x8, 256 bytes as float32)"),
         "modelkit: error: out of memory reading tensor embed.weight (x, 8x8, 256 bytes as float32)\n"),
        (MemoryError("Unable to allocate 3.00 GiB for an array with shape (805306368,) and data type float32"),
         "modelkit: error: out of memory (Unable to allocate 3.00 GiB for an array with shape (805306368,) and "
         "data type float32)\n"),
        (MemoryError(), "modelkit: error: out of memory\n"),
    ]:
        def fail(*args: Any, **kwargs: Any) -> None:
            raise raised

        monkeypatch.setattr(modelkit.loading, "load", fail)
        assert cli_main(["run", "--model", str(fixture_path("llama_gqa")), "--prompt", "hi"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err == want


# ---- any numbers: a refusal, a result or a diagnosed stop, never a warning or a traceback ---------

EXTREMES = st.one_of(
    st.sampled_from([0, 1, -1, 2 ** 31, 2 ** 63, 10 ** 40, 0.0, 1e-300, -1e-39, 1e-38, 3e38, -3.5e38, 1e39,
                     float("inf"), float("-inf"), float("nan"), 0.5, 6.0]),
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 10 ** 6))
# the multipliers most often: each may pass planning and still overflow at run time
NUMERIC_KEYS = ["embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scaling"] * 3 + [
    "rms_norm_eps", "vocab_size", "num_attention_heads"]


@pytest.fixture(scope="module")
def granite_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_fixture("granite3", tmp_path_factory.mktemp("numbers") / "m")


@settings(max_examples=80, deadline=None, derandomize=True, database=None, print_blob=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(changes=st.dictionaries(st.sampled_from(NUMERIC_KEYS), EXTREMES, min_size=1, max_size=3),
       theta=st.one_of(st.none(), EXTREMES))
def test_any_config_numbers_end_in_a_refusal_a_result_or_a_diagnosis(granite_folder: Path, changes: dict[str, Any],
                                                                      theta: Any) -> None:
    original = json.loads((fixture_path("granite3") / "config.json").read_text())
    config = {**original, **changes}
    if theta is not None:
        config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    (granite_folder / "config.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy RuntimeWarning would be an exception here
        try:
            model = modelkit.load(granite_folder)
        except modelkit.ModelkitError as exc:
            assert "\n" not in str(exc) or "modelkit validate" in str(exc), str(exc)
            return
        try:
            ids = model.generate([1, 2, 3], 3)
        except modelkit.GenerationError as exc:
            assert str(exc).startswith("the model produced logits that are NaN or infinite"), str(exc)
        else:
            assert all(0 <= i < model.vocab_size for i in ids)
