"""The tokenizer a GGUF file describes, rebuilt with the ``tokenizers`` library.

A GGUF has no tokenizer.json. llama.cpp stores the vocabulary (``tokenizer.ggml.tokens``), each
token's type (``token_type``: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte),
the BPE merges, the special token ids, and a *name* for the pre-tokenizer
(``tokenizer.ggml.pre``) whose regexes live in llama.cpp's own source (llama-vocab.cpp). This
module maps those names to the same regexes, so text splits as llama.cpp splits it.

Two vocabularies are supported:

- ``gpt2``: byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen2, ...);
- ``llama``: SentencePiece BPE with byte fallback (Llama 2, TinyLlama, Mistral v0.1); the file
  has scores instead of merges, so merges are derived from the scores.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelkit import Tokenizer, TokenizerError

from .reader import first_line

CONTROL, USER_DEFINED, UNKNOWN = 3, 4, 2

# The work of building a tokenizer grows with its tokens' lengths (every cut of every
# SentencePiece token is tried, below), so both are bounded. Real vocabularies' longest tokens
# are a few hundred bytes (SmolLM2: 162, Gemma 3: 48); llama.cpp itself only caps a string at
# 1 GiB. Gemma 3's 262,144 SentencePiece tokens have 1.2 million cuts in all.
MAX_TOKEN_BYTES = 1024
MAX_SENTENCEPIECE_CUTS = 8_000_000

# llama.cpp's split regexes (llama-vocab.cpp, llm_tokenizer_bpe), applied one after the other;
# each keeps the text between its matches as pieces too (tokenizers' "isolated" Split)
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
         r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEFAULT = [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"]


def _family(names: str, regexes: list[str], *, ignore_merges: bool = False,
            add_bos: bool = False) -> dict[str, dict[str, Any]]:
    spec = {"regexes": regexes, "ignore_merges": ignore_merges, "add_bos": add_bos}
    return {name: spec for name in names.split()}


# tokenizer.ggml.pre -> how llama.cpp splits text (and its defaults for that vocabulary)
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    **_family("default", DEFAULT),
    **_family("gpt-2 phi-2 jina-es jina-de gigachat jina-v2-es jina-v2-de jina-v1-en jina-v2-code "
              "roberta-bpe a.x-4.0 mellum modern-bert exaone4 mpt olmo jais trillion "
              "granite-docling", [GPT2]),
    # SmolLM, StarCoder: every digit alone, then GPT-2's split
    **_family("smollm starcoder refact command-r codeshell exaone minerva-7b", [r"\p{N}", GPT2]),
    **_family("llama3 llama-v3 llama-bpe falcon3 falcon-h1 pixtral midm-2.0 lfm2 jina-v5-nano",
              [LLAMA3], ignore_merges=True, add_bos=True),
    **_family("dbrx smaug-bpe", [LLAMA3]),
    **_family("qwen2 deepseek-r1-qwen kormo f2llmv2 megrez stablelm2 hunyuan", [QWEN2]),
}


def _token_ids(meta: Mapping[str, Any]) -> dict[str, int | None]:
    out = {}
    for name in ("bos", "eos", "unknown", "padding"):
        value = meta.get(f"tokenizer.ggml.{name}_token_id")
        out[name] = value if isinstance(value, int) else None
    return out


def _add_tokens(backend: Any, tokens: list[str], types: list[int]) -> None:
    """Control tokens as special tokens, user-defined ones as plain added tokens: both are
    matched whole in any text (as llama.cpp does), never cut by BPE."""
    from tokenizers import AddedToken

    def pick(kind: int) -> list[Any]:
        return [AddedToken(t, special=kind == CONTROL, normalized=False)
                for t, k in zip(tokens, types) if k == kind]

    backend.add_special_tokens(pick(CONTROL))
    backend.add_tokens(pick(USER_DEFINED))


def _split_merge(merge: str) -> tuple[str, str]:
    # as llama.cpp: the separator is the first space after the first character
    pos = merge.find(" ", 1)
    if pos < 0:
        raise TokenizerError(f"tokenizer.ggml.merges: malformed merge {merge!r} (expected 'left right')")
    return merge[:pos], merge[pos + 1:]


def _byte_level(meta: Mapping[str, Any], tokens: list[str], where: str) -> tuple[Any, bool]:
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as Backend

    pre = meta.get("tokenizer.ggml.pre", "default") or "default"
    spec = PRE_TOKENIZERS.get(pre)
    if spec is None:
        known = ", ".join(sorted(PRE_TOKENIZERS))
        raise TokenizerError(f"{where}: unknown pre-tokenizer tokenizer.ggml.pre = {pre!r}; "
                             f"modelkit knows {known}")
    merges_raw = meta.get("tokenizer.ggml.merges", [])  # none: characters only
    if not isinstance(merges_raw, list):
        raise TokenizerError(f"{where}: tokenizer.ggml.merges must be an array of strings")
    vocab = {token: i for i, token in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[_split_merge(m) for m in merges_raw],
                     ignore_merges=spec["ignore_merges"])
    backend = Backend(bpe)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in spec["regexes"]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    return backend, spec["add_bos"]


def _check_tokens(tokens: list[Any], where: str) -> None:
    """Every token a string of at most :data:`MAX_TOKEN_BYTES` UTF-8 bytes."""
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TokenizerError(f"{where}: tokenizer.ggml.tokens[{i}] is not a string ({type(token).__name__})")
        if len(token) * 4 <= MAX_TOKEN_BYTES:  # short enough in any encoding: skip the count
            continue
        size = len(token.encode("utf-8", "surrogatepass"))
        if size > MAX_TOKEN_BYTES:
            raise TokenizerError(f"{where}: tokenizer.ggml.tokens[{i}] is {size:,} bytes long; modelkit reads "
                                 f"tokens of at most {MAX_TOKEN_BYTES:,} bytes (real vocabularies' longest are "
                                 f"a few hundred)")


def _sentencepiece_merges(tokens: list[str], scores: list[float], where: str) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: every split of a token into two tokens,
    best-scored merged token first (what transformers' converters do). Every cut of every token
    is tried, so the cuts in all are bounded by :data:`MAX_SENTENCEPIECE_CUTS`."""
    cuts = sum(map(len, tokens)) - len(tokens)
    if cuts > MAX_SENTENCEPIECE_CUTS:
        raise TokenizerError(f"{where}: tokenizer.ggml.tokens: deriving merges from this SentencePiece "
                             f"vocabulary means trying {cuts:,} cuts; modelkit tries at most "
                             f"{MAX_SENTENCEPIECE_CUTS:,} (Gemma 3's 262,144 tokens have 1.2 million)")
    vocab = {token: i for i, token in enumerate(tokens)}
    get = vocab.get
    found = []
    for token, score in zip(tokens, scores):
        for cut in range(1, len(token)):
            left = get(token[:cut])
            if left is None:  # most cuts end here: the right half is never sliced
                continue
            right = get(token[cut:])
            if right is not None:
                found.append((-score, left, right))
    found.sort()
    return [(tokens[left], tokens[right]) for _, left, right in found]


def _sentencepiece(meta: Mapping[str, Any], tokens: list[str], ids: dict[str, int | None],
                   where: str) -> tuple[Any, bool]:
    from tokenizers import decoders, models, normalizers
    from tokenizers import Tokenizer as Backend

    scores = meta.get("tokenizer.ggml.scores")
    if not isinstance(scores, list) or len(scores) != len(tokens):
        raise TokenizerError(f"{where}: a SentencePiece vocabulary needs one tokenizer.ggml.scores "
                             f"entry per token")
    unk = tokens[ids["unknown"]] if ids["unknown"] is not None else None
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=_sentencepiece_merges(tokens, scores, where),
                     unk_token=unk, fuse_unk=True, byte_fallback=True)
    backend = Backend(bpe)
    prefix = meta.get("tokenizer.ggml.add_space_prefix", True)
    steps = [normalizers.Prepend("\u2581")] if prefix else []
    backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "\u2581")])
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(dec)
    return backend, True


def _post_processor(tokens: list[str], ids: dict[str, int | None], add_bos: bool, add_eos: bool,
                    where: str) -> Any:
    from tokenizers import processors

    if not add_bos and not add_eos:
        return processors.ByteLevel(trim_offsets=False)
    special = []
    single, pair = ["$A:0"], ["$B:1"]
    for flag, name, at_start in ((add_bos, "bos", True), (add_eos, "eos", False)):
        if not flag:
            continue
        token_id = ids[name]
        if token_id is None or not 0 <= token_id < len(tokens):
            raise TokenizerError(f"{where}: tokenizer.ggml.add_{name}_token is set but "
                                 f"tokenizer.ggml.{name}_token_id is missing or out of range")
        tok = tokens[token_id]
        special.append((tok, token_id))
        if at_start:
            single.insert(0, f"{tok}:0")
            pair.insert(0, f"{tok}:1")
        else:
            single.append(f"{tok}:0")
            pair.append(f"{tok}:1")
    return processors.TemplateProcessing(single=" ".join(single), pair=" ".join(single + pair),
                                         special_tokens=special)


def tokenizer_from_metadata(meta: Mapping[str, Any], path: Path) -> Tokenizer | None:
    """A :class:`modelkit.Tokenizer` from a GGUF file's tokenizer metadata
    (:attr:`GGUFFile.metadata <modelkit_gguf.reader.GGUFFile.metadata>`), or None when the file
    has no vocabulary."""
    where = str(path)
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if model is None or not isinstance(tokens, list):
        return None
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not isinstance(types, list):
        raise TokenizerError(f"{where}: tokenizer.ggml.token_type must be an array, got {types!r}")
    if len(types) != len(tokens):
        raise TokenizerError(f"{where}: tokenizer.ggml.token_type has {len(types)} entries for "
                             f"{len(tokens)} tokens")
    _check_tokens(tokens, where)
    ids = _token_ids(meta)
    try:
        if model == "gpt2":
            backend, add_bos = _byte_level(meta, tokens, where)
        elif model == "llama":
            backend, add_bos = _sentencepiece(meta, tokens, ids, where)
        else:
            raise TokenizerError(f"{where}: tokenizer.ggml.model {model!r} is not supported "
                                 f"(modelkit reads 'gpt2' byte-level BPE and 'llama' SentencePiece)")
        add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos))
        add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
        _add_tokens(backend, tokens, types)
        backend.post_processor = _post_processor(tokens, ids, add_bos, add_eos, where)
    except TokenizerError:
        raise
    except Exception as exc:  # the tokenizers library raises bare Exceptions on bad input
        raise TokenizerError(f"{where}: cannot build the tokenizer from its metadata "
                             f"({first_line(exc)})") from None

    def text(name: str) -> str | None:
        token_id = ids[name]
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    template = meta.get("tokenizer.chat_template")
    extra = {"add_bos_token": add_bos, "add_eos_token": add_eos, "tokenizer_model": model,
             "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
             "pad_token": text("padding"), "unk_token": text("unknown")}
    return Tokenizer(backend, chat_template=template if isinstance(template, str) else None,
                     bos_token=text("bos"), eos_token=text("eos"), extra=extra, source=where,
                     bounded=False)  # llama.cpp's own regexes over a BPE model: linear work
