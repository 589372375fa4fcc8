"""Batched Mamba2 decoding over slot-stacked states (modelkit_granite.mamba2_batch) equals each
sequence decoded alone, whoever joins or leaves, across folds of the pending steps; states keep
working on their own while seated and after they leave."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from modelkit.nn.block import ForwardContext
from modelkit_granite.mamba2_block import Mamba2

F32 = np.float32


def _block(seed: int = 0, **over) -> Mamba2:
    opts = dict(hidden_size=12, d_inner=16, num_heads=4, head_dim=4, n_groups=2, d_state=3,
                d_conv=4, chunk_size=3, conv_bias=True, proj_bias=True, eps=1e-5, pending_window=4)
    opts = Mamba2.resolve_options(**{**opts, **over})
    rng = np.random.default_rng(seed)
    params = {name: (0.3 * rng.standard_normal(spec.shape)).astype(F32)
              for name, spec in Mamba2.params(opts).items()}
    params["A_log"] = np.log(rng.uniform(1, 8, opts["num_heads"])).astype(F32)
    return Mamba2(opts, params)


class Sequence:
    """One sequence decoded twice: in the batch (``state``) and alone on ``twin``."""

    def __init__(self, block: Mamba2, alone: Mamba2, rng: np.random.Generator, prompt: int):
        self.state, self.twin = block.new_state(), alone.new_state()
        self.rng = rng
        self.pos = 0
        if prompt:
            x = rng.standard_normal((prompt, 12)).astype(F32)
            block.forward(x, self.state, ForwardContext(0, prompt))
            alone.forward(x, self.twin, ForwardContext(0, prompt))
            self.pos = prompt

    def token(self) -> np.ndarray:
        return self.rng.standard_normal(12).astype(F32)


def _step_both(block: Mamba2, alone: Mamba2, seqs: list[Sequence]) -> None:
    """One token for each of ``seqs``: in one batched step on ``block``, and alone on ``alone``."""
    x = np.stack([s.token() for s in seqs])
    block.forward_batch(x, [s.state for s in seqs], [s.pos for s in seqs])
    for i, s in enumerate(seqs):
        alone.forward(x[i:i + 1], s.twin, ForwardContext(s.pos, 1))
        s.pos += 1


@pytest.mark.parametrize("window", [1, 4, 7])
def test_batched_steps_equal_each_sequence_alone_as_sequences_join_and_leave(window: int) -> None:
    block, alone = _block(pending_window=window), _block(pending_window=window)  # same weights
    rng = np.random.default_rng(1)
    running: list[Sequence] = []
    for step in range(40):
        if step % 5 == 0 and len(running) < 6:  # join, with or without a prompt
            running.append(Sequence(block, alone, rng, prompt=int(rng.integers(0, 6))))
        if step % 7 == 3 and len(running) > 2:  # leave from the middle: slots are refilled
            running.pop(int(rng.integers(0, len(running) - 1)))
        if step % 11 == 6:
            running.reverse()  # rows in another order than slots
        if step % 3 == 1:  # one seated sequence decodes a token on its own (its pending steps diverge)
            seq = running[int(rng.integers(0, len(running)))]
            x1 = seq.token()[None]
            np.testing.assert_allclose(block.forward(x1, seq.state, ForwardContext(seq.pos, 1)),
                                       alone.forward(x1, seq.twin, ForwardContext(seq.pos, 1)), rtol=1e-5, atol=1e-5)
            seq.pos += 1
        x = np.stack([seq.token() for seq in running])
        got = block.forward_batch(x, [seq.state for seq in running], [seq.pos for seq in running])
        for i, seq in enumerate(running):
            want = alone.forward(x[i:i + 1], seq.twin, ForwardContext(seq.pos, 1))[0]
            np.testing.assert_allclose(got[i], want, rtol=1e-5, atol=1e-5)
            seq.pos += 1
    for seq in running:
        np.testing.assert_allclose(seq.state.ssm, seq.twin.ssm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(seq.state.conv, seq.twin.conv, rtol=1e-6, atol=1e-6)


def test_a_seated_state_works_alone_and_snapshots_are_its_own() -> None:
    block, alone = _block(), _block()
    rng = np.random.default_rng(2)
    seqs = [Sequence(block, alone, rng, prompt=3) for _ in range(3)]
    for _ in range(6):
        _step_both(block, alone, seqs)
    pool = block._pool
    assert all(np.shares_memory(s.state.pending.dtx, pool.arrays["dtx"]) for s in seqs)
    assert all(np.shares_memory(s.state.conv, pool.arrays["conv"]) for s in seqs)
    snap = copy.deepcopy(seqs[1].state)  # what Cache.snapshot does with a Mamba2State
    assert not np.shares_memory(snap.pending.dtx, pool.arrays["dtx"])
    assert not np.shares_memory(snap.conv, pool.arrays["conv"])
    # one sequence goes on alone (a prompt continued outside the batch), through its views
    x = rng.standard_normal((4, 12)).astype(F32)
    got = block.forward(x, seqs[1].state, ForwardContext(seqs[1].pos, 4))
    want = alone.forward(x, seqs[1].twin, ForwardContext(seqs[1].pos, 4))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(snap.ssm - seqs[1].state.ssm).max() > 1e-3  # the snapshot stayed behind


def test_leaving_the_batch_and_end_batch_give_states_their_own_arrays() -> None:
    block, alone = _block(), _block()
    rng = np.random.default_rng(3)
    seqs = [Sequence(block, alone, rng, prompt=2) for _ in range(4)]
    for _ in range(3):
        _step_both(block, alone, seqs)
    gone = seqs.pop(0)
    _step_both(block, alone, seqs)
    pool = block._pool
    assert len(pool.occupants) == 3
    assert not np.shares_memory(gone.state.conv, pool.arrays["conv"])
    assert not np.shares_memory(gone.state.pending.dtx, pool.arrays["dtx"])
    np.testing.assert_allclose(gone.state.ssm, gone.twin.ssm, rtol=1e-5, atol=1e-5)
    block.end_batch()
    assert block._pool is None
    for s in seqs:  # still exact, and free of the dropped pool
        np.testing.assert_allclose(s.state.ssm, s.twin.ssm, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s.state.conv, s.twin.conv, rtol=1e-6, atol=1e-6)
        assert not np.shares_memory(s.state.conv, pool.arrays["conv"])
        assert not np.shares_memory(s.state.pending.b, pool.arrays["b"])


def test_the_same_state_twice_in_a_batch_is_refused() -> None:
    block = _block()
    state = block.new_state()
    with pytest.raises(ValueError, match="twice"):
        block.forward_batch(np.ones((2, 12), F32), [state, state], [0, 0])


def test_a_slot_left_by_a_sequence_gone_to_nan_serves_the_next_one_cleanly() -> None:
    """A sequence whose inputs went non-finite leaves NaN in its slot's pending rows; the
    sequence seated there next is not touched by them."""
    block, alone = _block(), _block()
    rng = np.random.default_rng(5)
    sick, well = Sequence(block, alone, rng, prompt=2), Sequence(block, alone, rng, prompt=2)
    for _ in range(3):
        x = np.stack([well.token(), np.full(12, np.nan, F32)])  # sick in the last slot: nobody refills it
        block.forward_batch(x, [well.state, sick.state], [well.pos, sick.pos])
        alone.forward(x[:1], well.twin, ForwardContext(well.pos, 1))
        sick.pos += 1
        well.pos += 1
    fresh = Sequence(block, alone, rng, prompt=3)
    x = np.stack([well.token(), fresh.token()])
    got = block.forward_batch(x, [well.state, fresh.state], [well.pos, fresh.pos])  # fresh takes sick's slot
    assert np.isnan(sick.state.pending.dtx[:sick.state.pending.count]).all()  # sick kept its own NaN
    np.testing.assert_allclose(got[0], alone.forward(x[:1], well.twin, ForwardContext(well.pos, 1))[0],
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], alone.forward(x[1:], fresh.twin, ForwardContext(fresh.pos, 1))[0],
                               rtol=1e-5, atol=1e-5)
