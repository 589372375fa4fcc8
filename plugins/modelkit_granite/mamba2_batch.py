"""The Mamba2 states of a running batch side by side, so that one decoding step of B sequences
is one set of array operations instead of B.

A decoding step of one sequence is some twenty small NumPy calls (the pending steps' decays and
their readout, the conv window) besides the readout of its state; with sixteen sequences those
calls, not the weights, were the larger part of a batched step's Mamba2 time. :class:`SlotPool`
keeps every batched sequence's conv history and pending steps (a few hundred KB a layer) in slot
``i`` of arrays with a leading batch axis, and each sequence's
:class:`~modelkit_granite.mamba2_block.Mamba2State` holds views of its slot, so the state stays
usable on its own (one-sequence forwards, snapshots, ``nbytes``). The folded state itself (the
largest part, [G, N, H/G * P]) stays in the sequence's own array: its readout is one product per
sequence either way, and seating a sequence then copies little. A sequence that leaves the batch
gets arrays of its own back the next time the pool sees a batch without it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .mamba2 import PendingSteps, exp_decay, fold_pending, step_log_decay


# slots are reserved in steps of this many: the arrays are zero pages until a slot is used, so a
# batch that grows one sequence at a time (a server's) does not copy the pool at every join
SLOT_STEP = 16


class SlotPool:
    """Slot-stacked Mamba2 state parts of one layer for up to S sequences: ``conv`` [S, K-1, C]
    and the pending steps, ``b`` [S, W, G, N], ``dtx`` [S, W, H, P], ``log_decay`` [S, W, H],
    ``base_log_decay`` [S, H]. Slots ``0..len(occupants)-1`` are in use; a slot's pending rows
    past its sequence's count hold zeros or that sequence's own earlier steps, and are masked."""

    def __init__(self, d_conv: int, conv_dim: int, heads: int, head_dim: int, groups: int,
                 d_state: int, window: int):
        self.shapes = {
            "conv": (d_conv - 1, conv_dim),
            "b": (window, groups, d_state),
            "dtx": (window, heads, head_dim),
            "log_decay": (window, heads),
            "base_log_decay": (heads,),
        }
        self.window = window
        self.arrays = {name: np.zeros((0, *shape), np.float32) for name, shape in self.shapes.items()}
        self.occupants: list = []  # the states in slots 0.., in slot order
        self.touched = 0  # slots from here on have never been used: still zeros (untouched pages)

    # -- placing states in slots ---------------------------------------------------------------

    def seat(self, states: Sequence) -> np.ndarray:
        """Make ``states`` exactly the pool's occupants and return each one's slot, [B] int.

        States already seated keep their slot; states no longer in the batch get arrays of their
        own back and their slots are filled from the end, so occupied slots stay 0..B-1."""
        wanted = {id(s) for s in states}
        if len(wanted) != len(states):
            raise ValueError("mamba2: the same state twice in one batch")
        for slot in range(len(self.occupants) - 1, -1, -1):
            if id(self.occupants[slot]) not in wanted:
                self._unseat(slot)
        seated = {id(s): i for i, s in enumerate(self.occupants)}
        newcomers = [s for s in states if id(s) not in seated]
        if newcomers:
            self._reserve(len(self.occupants) + len(newcomers))
            for state in newcomers:
                seated[id(state)] = len(self.occupants)
                self._move_in(state, len(self.occupants))
                self.occupants.append(state)
        return np.fromiter((seated[id(s)] for s in states), np.intp, len(states))

    def _reserve(self, count: int) -> None:
        """Room for ``count`` slots: the arrays grow and every occupant is re-pointed."""
        capacity = self.arrays["conv"].shape[0]
        if count <= capacity:
            return
        capacity = -(-count // SLOT_STEP) * SLOT_STEP
        for name, old in self.arrays.items():
            new = np.zeros((capacity, *self.shapes[name]), np.float32)
            new[:self.touched] = old[:self.touched]  # the rest is zeros in both: leave its pages untouched
            self.arrays[name] = new
        for slot, state in enumerate(self.occupants):
            self._point(state, slot)

    def _point(self, state, slot: int) -> None:
        """Rebind ``state``'s pooled arrays to views of ``slot``."""
        a, pending = self.arrays, state.pending
        state.conv = a["conv"][slot]
        pending.b, pending.dtx = a["b"][slot], a["dtx"][slot]
        pending.log_decay, pending.base_log_decay = a["log_decay"][slot], a["base_log_decay"][slot]

    def _move_in(self, state, slot: int) -> None:
        """Copy ``state``'s pooled parts into ``slot`` and point it there. Only the pending steps
        in use are copied; the slot's other pending rows are zeroed (its last occupant's could be
        anything, and masked rows are multiplied by 0)."""
        pending: PendingSteps = state.pending
        if pending.b.shape[0] != self.window:
            raise ValueError(f"mamba2: a state with {pending.b.shape[0]} pending steps in a pool of {self.window}")
        k = pending.count
        a = self.arrays
        a["conv"][slot] = state.conv
        for name, source in (("b", pending.b), ("dtx", pending.dtx), ("log_decay", pending.log_decay)):
            a[name][slot, :k] = source[:k]
            if slot < self.touched:
                a[name][slot, k:] = 0.0
        a["base_log_decay"][slot] = pending.base_log_decay
        self.touched = max(self.touched, slot + 1)
        self._point(state, slot)

    def _unseat(self, slot: int) -> None:
        """Give the occupant of ``slot`` arrays of its own and fill the slot from the last one."""
        state = self.occupants[slot]
        pending = state.pending
        state.conv = state.conv.copy()
        k = pending.count
        for name in ("b", "dtx", "log_decay"):  # the rows in use; the rest are never read
            own = np.empty_like(getattr(pending, name))
            own[:k] = getattr(pending, name)[:k]
            setattr(pending, name, own)
        pending.base_log_decay = pending.base_log_decay.copy()
        last = len(self.occupants) - 1
        if slot != last:
            moved = self.occupants[last]
            for array in self.arrays.values():
                array[slot] = array[last]
            self.occupants[slot] = moved
            self._point(moved, slot)
        self.occupants.pop()

    # -- one decoding step of every occupant ---------------------------------------------------

    def conv_step(self, new: np.ndarray, weight_t: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """The causal conv of one new input per slot, ``new`` [B, C] in slot order -> [B, C]
        (before the activation), as :func:`modelkit.causal_conv` gives each; each slot's history
        moves on by one input."""
        b = new.shape[0]
        k = weight_t.shape[0]
        history = self.arrays["conv"][:b]  # [B, K-1, C], oldest first
        out = new * weight_t[k - 1]
        for tap in range(k - 1):
            out += history[:, tap] * weight_t[tap]
        if bias is not None:
            out += bias
        if k > 1:
            history[:, :-1] = history[:, 1:]
            history[:, -1] = new
        return out

    def ssd_step(self, x: np.ndarray, dt: np.ndarray, a: np.ndarray, b: np.ndarray,
                 c: np.ndarray) -> np.ndarray:
        """One step of the recurrence for each of the B occupants, inputs in slot order: ``x``
        [B, H, P], ``dt`` [B, H] (softplus'd), ``a`` [H], ``b``/``c`` [B, G, N]. Returns y
        [B, H, P] without the D skip, as :func:`~modelkit_granite.mamba2.ssd_step` gives each."""
        count, h, p = x.shape
        g = b.shape[1]
        arrays = self.arrays
        states = self.occupants[:count]
        for state in states:
            if state.pending.count == self.window:
                fold_pending(state.base, state.pending)
        ks = np.fromiter((s.pending.count for s in states), np.intp, count)
        slots = np.arange(count)
        log_decay = arrays["log_decay"][:count]  # [B, W, H]
        base_log = arrays["base_log_decay"][:count]  # [B, H]
        la = step_log_decay(dt, a)  # [B, H]
        log_decay += la[:, None, :]  # rows past a slot's count are reset before they are used
        log_decay[slots, ks] = 0.0
        base_log += la
        arrays["b"][slots, ks] = b
        arrays["dtx"][slots, ks] = x * dt[:, :, None]
        ks += 1

        y = np.empty((count, g, 1, h // g * p), np.float32)
        for i, state in enumerate(states):  # each folded state's readout: [G, 1, N] @ [G, N, H/G * P]
            np.matmul(c[i, :, None, :], state.base, out=y[i])
            state.pending.count = int(ks[i])
            state.fresh = False
        y = y.reshape(count, h, p)
        y *= exp_decay(base_log.copy())[:, :, None]
        used = int(ks.max())
        coef = exp_decay(log_decay[:, :used].copy())  # [B, k, H]
        coef[np.arange(used)[None, :] >= ks[:, None]] = 0.0  # rows past each slot's count
        c_dot_b = np.einsum("bkgn,bgn->bkg", arrays["b"][:count, :used], c)  # [B, k, G]: C . B_j
        grouped = coef.reshape(count, used, g, h // g)
        np.multiply(grouped, c_dot_b[:, :, :, None], out=grouped)
        pending = arrays["dtx"][:count, :used].transpose(0, 2, 1, 3)  # [B, H, k, P]
        y += np.matmul(coef.transpose(0, 2, 1)[:, :, None, :], pending).reshape(count, h, p)  # [B, H, 1, k] @ [B, H, k, P]
        return y
