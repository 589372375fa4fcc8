"""Building a model from its plan: read each planned tensor, transform it, assemble the blocks.

Tensors are read layer by layer, so fused copies (q/k/v, gate/up) replace the originals as
they are made and peak memory stays near the model's own size.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ..checkpoint.source import WeightSource
from ..errors import CheckpointError, MappingError, out_of_memory
from ..model import Layer, Model
from ..nn.block import Block
from ..nn.linear import product_layout
from .plan import Plan, PlannedBlock, PlannedTensor


class TensorReader:
    """Reads planned tensors as float32, C-contiguous, transformed, of the planned shape.

    Keeps the latest checkpoint tensor, so one fused tensor that feeds several parameters
    (Falcon's query_key_value) is read once."""

    def __init__(self, source: WeightSource):
        self.source = source
        self._memo: dict[str, np.ndarray] = {}

    def read(self, planned: PlannedTensor) -> np.ndarray:
        """The canonical tensor ``planned`` describes. Values beyond float32 (in an F64 tensor,
        or from a dequantiser's scales) become inf, silently: ``validate --values`` lists them."""
        assert planned.source is not None
        try:
            with np.errstate(over="ignore", invalid="ignore"):
                array = self._read(planned)
        except MemoryError as exc:
            shape = "x".join(map(str, planned.shape)) or "scalar"
            size = 4 * math.prod(planned.shape)
            raise out_of_memory(f"reading tensor {planned.canonical} ({planned.source}, {shape}, "
                                f"{size:,} bytes as float32)", exc) from None
        if tuple(array.shape) != tuple(planned.shape):
            raise CheckpointError(f"{planned.source}: transforms produced shape {list(array.shape)}, "
                                  f"expected {list(planned.shape)}")
        return array

    def _read(self, planned: PlannedTensor) -> np.ndarray:
        if planned.parts:  # a stacked entry: each piece transformed, then written into its row
            array = np.empty(planned.shape, np.float32)
            for j, name in enumerate(planned.parts):
                piece = self._transformed(name, planned)
                if piece.shape != array.shape[1:]:  # assignment would broadcast
                    raise CheckpointError(f"{name}: transforms produced shape {list(piece.shape)}, "
                                          f"expected {list(array.shape[1:])}")
                array[j] = piece
        else:
            array = self._transformed(planned.source, planned)
        if array.dtype != np.float32 or not array.flags.c_contiguous:
            array = np.ascontiguousarray(array, dtype=np.float32)
        return array

    def _transformed(self, name: str, planned: PlannedTensor) -> np.ndarray:
        """Checkpoint tensor ``name`` with ``planned``'s transforms applied."""
        array = self._memo.get(name)
        if array is None:
            array = self.source.read(name)
            self._memo.clear()
            self._memo[name] = array
        for t in planned.transforms:
            try:
                array = t.transform.apply(array, **t.args)
            except CheckpointError:
                raise
            except (TypeError, ValueError, KeyError, IndexError, ArithmeticError) as exc:
                raise MappingError(f"{planned.canonical}: transform '{t.transform.name}' failed: {exc}") from None
        return array

    def close(self) -> None:
        self._memo.clear()


def progress_bar(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr when enabled and stderr is a terminal, else None."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="loading", unit="tensor", leave=False, file=sys.stderr)


def build_model(source: WeightSource, plan: Plan, *, file: str = "", progress: bool = False,
                prefill_chunk: int = 512) -> Model:
    """Read every planned tensor and assemble the model, layer by layer."""
    reader = TensorReader(source)
    bar = progress_bar(len(plan.tensors), progress)
    n_params = 0

    def get(canonical: str) -> np.ndarray | None:
        nonlocal n_params
        planned = plan.tensors.get(canonical)
        if planned is None:
            return None
        array = reader.read(planned)
        n_params += array.size
        if bar is not None:
            bar.update(1)
        return array

    def block(planned: PlannedBlock, prefix: str) -> Block:
        params = {pname: get(f"{prefix}{pname}") for pname in planned.params}
        try:
            return planned.cls(planned.options, params)
        except MemoryError as exc:  # fusing q/k/v or gate/up, rotary tables
            raise out_of_memory(f"building block {prefix.rstrip('.')} ({planned.kind})", exc) from None

    try:
        embed = get("embed.weight")
        assert embed is not None
        # the head, the largest matrix a token reads, laid out as the projections are (see
        # product_layout); a tied embedding shares it (in the [in, out] layout a token's row is
        # a strided gather: microseconds). Read first, so that a copy's transient doubling (when
        # the layout needs one) comes before the layers are in memory.
        untied_head = None if plan.tied else get("head.weight")
        try:
            if plan.tied:
                embed = product_layout(embed)
            elif untied_head is not None:
                untied_head = product_layout(untied_head)
        except MemoryError as exc:
            raise out_of_memory(f"laying out the head ({embed.shape[0]:,} x {embed.shape[1]:,})", exc) from None
        pos_embed = get("pos_embed.weight")
        embed_proj = get("embed_proj.weight")
        embed_norm = block(plan.embed_norm, "embed_norm.") if plan.embed_norm is not None else None
        layers = []
        source.release_pages()
        for i, pl in enumerate(plan.layers):
            layers.append(Layer(pl.spec, {name: block(pb, f"layers.{i}.{name}.") for name, pb in pl.blocks.items()},
                                pl.residual_multiplier, pl.variant, index=i))
            source.release_pages()  # what the layer copied from a mapped file leaves memory
        final_norm = block(plan.final_norm, "final_norm.") if plan.final_norm is not None else None
        head_proj = get("head_proj.weight")
        head = embed if plan.tied else untied_head
        head_bias = get("head.bias")
    finally:
        reader.close()
        if bar is not None:
            bar.close()
    assert head is not None
    try:
        tokenizer = source.tokenizer()
    except MemoryError as exc:
        raise out_of_memory(f"loading the tokenizer of {source.path}", exc) from None
    return Model(name=plan.mapping.name, config=plan.config, mapping=plan.mapping, layers=layers,
                 embed=embed, pos_embed=pos_embed, final_norm=final_norm, head=head, head_bias=head_bias,
                 embedding_multiplier=plan.embedding_multiplier, logits_divisor=plan.logits_divisor,
                 logits_softcap=plan.logits_softcap, embed_norm=embed_norm, embed_proj=embed_proj,
                 head_proj=head_proj,
                 tokenizer=tokenizer, generation_config=source.generation_config(),
                 source=str(source.path), tied=plan.tied, n_params=n_params, mapping_file=file,
                 prefill_chunk=prefill_chunk)
