"""A test kit for mapping and plugin authors.

* :mod:`modelkit.testing.build_fixture` (run where torch and transformers are): a tiny random
  checkpoint of a family and transformers' reference logits for it, every parameter randomised.
* :func:`assert_matches_reference` and the checks it runs (:mod:`.contract`): full forward,
  token-by-token decoding, prefill in pieces and greedy tokens against that reference.

See docs/adding-an-architecture.md. Importing this package needs NumPy only.
"""

from .contract import (ATOL, CUTS, GREEDY_TOKENS, PREFILLS, SELF_ATOL, FixtureReference, assert_matches_reference,
                       check_cached_decoding, check_full_forward, check_greedy_tokens, check_prefill_in_pieces,
                       max_abs, read_reference)

__all__ = ["ATOL", "CUTS", "GREEDY_TOKENS", "PREFILLS", "SELF_ATOL", "FixtureReference", "assert_matches_reference",
           "check_cached_decoding", "check_full_forward", "check_greedy_tokens", "check_prefill_in_pieces",
           "max_abs", "read_reference"]
