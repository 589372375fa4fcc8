"""Checkpoints: the weight-source contract, Hugging Face folders, config.json, side files, the hub."""
