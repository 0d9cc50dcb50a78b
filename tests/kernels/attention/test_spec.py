"""The contract's band and the block ranges the kernels loop over.

The kernels skip key blocks outside a causal or windowed band through
`kv_block_range` / `q_block_range`; these tests check, by brute force over small cases,
that the ranges hold every block with an allowed pair, and that their first and last
blocks each hold one (so nothing is visited that could have been skipped).
"""

from __future__ import annotations

import hypothesis
from hypothesis import strategies as st
import numpy as np

from kernels.attention.spec import Band, kv_block_range, make_band, q_block_range


def _allowed(band: Band, q_len: int, kv_len: int) -> np.ndarray:
  rows, cols = np.arange(q_len)[:, None], np.arange(kv_len)[None, :]
  allowed = band.allows(rows, cols)
  return np.broadcast_to(np.asarray(allowed), (q_len, kv_len))


def test_make_band():
  assert make_band(4, 4) is None
  assert make_band(4, 6, causal=True) == Band(None, 0)
  assert make_band(4, 6, causal=True, causal_alignment="bottom_right") == Band(None, 2)
  assert make_band(4, 6, local_window_size=(3, 1)) == Band(-3, 1)
  assert make_band(4, 6, local_window_size=(3, 1), causal=True,
                   causal_alignment="bottom_right") == Band(-1, 2)


@hypothesis.settings(max_examples=200, deadline=None, derandomize=True)
@hypothesis.given(q_len=st.integers(1, 70), kv_len=st.integers(1, 70),
                  block_q=st.sampled_from([8, 16, 32]), block_k=st.sampled_from([8, 16, 32]),
                  causal=st.booleans(), bottom_right=st.booleans(),
                  window=st.one_of(st.none(), st.tuples(st.integers(0, 40), st.integers(0, 40))))
def test_block_ranges_hold_exactly_the_blocks_with_allowed_pairs(q_len, kv_len, block_q,
                                                                 block_k, causal, bottom_right,
                                                                 window):
  band = make_band(q_len, kv_len, causal=causal, local_window_size=window,
                   causal_alignment="bottom_right" if bottom_right else "top_left")
  hypothesis.assume(band is not None)
  num_q, num_k = -(-q_len // block_q), -(-kv_len // block_k)
  q_pad, kv_pad = num_q * block_q, num_k * block_k
  allowed = _allowed(band, q_pad, kv_pad)  # the padded grid: padding is masked elsewhere
  tiles = allowed.reshape(num_q, block_q, num_k, block_k).any(axis=(1, 3))  # [nq, nk]
  for i in range(num_q):
    first, stop = (int(x) for x in kv_block_range(band, i * block_q, block_q, block_k, num_k))
    visited = np.zeros(num_k, bool)
    visited[first:max(first, stop)] = True
    assert (visited >= tiles[i]).all(), (i, first, stop)  # nothing allowed is skipped
    if stop > first:
      assert tiles[i, first] and tiles[i, stop - 1], (i, first, stop)
    else:
      assert not tiles[i].any()
  for j in range(num_k):
    first, stop = (int(x) for x in q_block_range(band, j * block_k, block_k, block_q, num_q))
    visited = np.zeros(num_q, bool)
    visited[first:max(first, stop)] = True
    assert (visited >= tiles[:, j]).all(), (j, first, stop)
    if stop > first:
      assert tiles[first, j] and tiles[stop - 1, j], (j, first, stop)
    else:
      assert not tiles[:, j].any()
