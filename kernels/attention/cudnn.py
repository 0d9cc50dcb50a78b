"""cuDNN's fused attention as a path of `kernels.attention`, through `jax.nn`.

`jax.nn.dot_product_attention(implementation="cudnn")` runs cuDNN's flash attention on
NVIDIA GPUs for 16-bit inputs. This module maps `kernels.attention`'s arguments onto it and
restores `kernels.attention.reference`'s semantics where `jax.nn`'s differ: a row with no
key to attend (a fully masked row, a row past `q_lengths`) gives zeros and a log-sum-exp of
`-inf` here, where `jax.nn` gives the mean of the values. What cuDNN cannot express (a soft
cap, segment ids, a bottom-right diagonal, float32) is refused by `kernels.attention.api`
before this runs; cuDNN's own limits (head dims, GPU generations) raise from `jax.nn`.

>>> import jax, jax.numpy as jnp
>>> from kernels.attention.cudnn import attention_cudnn
>>> q = k = v = jax.random.normal(jax.random.key(0), (1, 16, 2, 8), jnp.bfloat16)
>>> attention_cudnn(q, k, v, None, None, causal=True, local_window_size=None,
...                 q_lengths=None, kv_lengths=None, scale=0.35,
...                 implementation="xla").shape  # jax.nn's XLA path, on any backend
(1, 16, 2, 8)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.attention.reference import allowed_mask

__all__ = ["attention_cudnn"]


def attention_cudnn(q, k, v, bias, mask, *, causal: bool, local_window_size, q_lengths,
                    kv_lengths, scale: float, return_residual: bool = False,
                    implementation: str = "cudnn"):
  """Attention through `jax.nn.dot_product_attention`, with the reference's semantics.

  Args:
    q: `[B, Tq, Hq, D]`, bfloat16 or float16 for cuDNN.
    k, v: `[B, Tk, Hkv, D]`.
    bias: None or float, broadcastable to `[B, Hq, Tq, Tk]`.
    mask: None or bool, broadcastable to `[B, Hq, Tq, Tk]`.
    causal: top-left causal attention.
    local_window_size: None or `(left, right)`; cuDNN takes a right window only with
      `causal` (where it is moot) or `right == 0`.
    q_lengths, kv_lengths: None or int32 `[B]`.
    scale: the logit scale.
    return_residual: also return the log-sum-exp, float32 `[B, Tq, Hq]`, as an output
      only: `jax.nn` passes no gradient through it (use "xla_chunked" or a Pallas path to
      differentiate it, e.g. to train through merged partial attentions).
    implementation: `jax.nn`'s: "cudnn", or "xla" (its XLA path: how the tests check this
      mapping without a GPU).

  Returns:
    `[B, Tq, Hq, D]` in `q.dtype`, and with `return_residual` the log-sum-exp.

  Raises:
    ValueError: for a right window without `causal`, which cuDNN cannot express.
  """
  if (implementation == "cudnn" and local_window_size is not None and not causal
      and local_window_size[1] != 0):
    raise ValueError("impl='cudnn' takes local_window_size=(left, right) with right == 0 "
                     f"unless causal=True; got {local_window_size}")
  if mask is not None:
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  if bias is not None:
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)
  result = jax.nn.dot_product_attention(
      q, k, v, bias, mask, scale=scale, is_causal=causal, query_seq_lengths=q_lengths,
      key_value_seq_lengths=kv_lengths, local_window_size=local_window_size,
      implementation=implementation, return_residual=return_residual)
  out, lse = result if return_residual else (result, None)
  if lse is not None:  # jax.nn passes no gradient through it: say so by stopping it
    lse = jax.lax.stop_gradient(lse.astype(jnp.float32))
  batch, q_len, q_heads, _ = q.shape
  # Top-left causal attention leaves every row its first key; only these can empty a row.
  if any(x is not None for x in (mask, q_lengths, kv_lengths, local_window_size)):
    allowed = allowed_mask(batch, q_len, k.shape[1], causal=causal, mask=mask,
                           q_lengths=q_lengths, kv_lengths=kv_lengths,
                           local_window_size=local_window_size)
    empty = jnp.swapaxes(~jnp.any(allowed, axis=-1), 1, 2)  # [B, Tq, 1 or Hq]
    out = jnp.where(empty[..., None], jnp.zeros((), out.dtype), out)
    if lse is not None:  # rows with nothing to attend: 0 and -inf, as on every other path
      lse = jnp.where(empty, -jnp.inf, lse)
  return out if lse is None else (out, jnp.broadcast_to(lse, (batch, q_len, q_heads)))
