"""Mapping files: the expression language, the parsed data, parsing, reading and resolving."""

from .read import read_mapping
from .resolve import Config, resolve_value
from .spec import PLACEHOLDER, BlockSpec, FieldSpec, LayerSpec, Mapping, ModelSpec, WeightSpec

__all__ = ["BlockSpec", "Config", "FieldSpec", "LayerSpec", "Mapping", "ModelSpec", "PLACEHOLDER",
           "WeightSpec", "read_mapping", "resolve_value"]
