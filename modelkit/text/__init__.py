"""Text: tokenizers, incremental decoding, and chat templates in a sandbox."""
