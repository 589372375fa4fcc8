"""Fixture copies with chat templates, for the chat tests."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import copy_fixture

GRANITE_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system = 'You are a helpful assistant.' %}{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- bos_token }}"
    "{{- '<|start_of_role|>system<|end_of_role|>' + system + eos_token + '\\n' }}"
    "{%- for message in loop_messages %}"
    "{{- '<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + eos_token + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_of_role|>assistant<|end_of_role|>' }}{%- endif %}"
)


def chat_model_folder(tmp_path: Path, template: str = GRANITE_STYLE, name: str = "llama_gqa",
                      bos_post_processor: bool = False) -> Path:
    """A copy of a fixture with a tokenizer_config.json carrying ``template`` and bos/eos."""
    folder = copy_fixture(name, tmp_path / f"{name}_chat")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": template, "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
    if bos_post_processor:  # the tokenizer adds BOS itself, as Llama's does
        data = json.loads((folder / "tokenizer.json").read_text())
        data["post_processor"] = {"type": "TemplateProcessing",
                                  "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
                                             {"Sequence": {"id": "A", "type_id": 0}}],
                                  "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                                           {"Sequence": {"id": "B", "type_id": 1}}],
                                  "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0],
                                                                        "tokens": ["<|endoftext|>"]}}}
        (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder
