"""SAM's attention with the decomposed relative-position bias, applied by a kernel of choice.

timm's (and segment_anything's) ``get_rel_pos`` builds its index tensor on the CPU on every call, a
host-to-device copy per attention call on a GPU; here it is built once per (size, device) and kept.
The bias ``rel_h[q, k_row] + rel_w[q, k_col]`` is applied in one of three ways (``model.attention``):

- ``sdpa``: ``scaled_dot_product_attention`` with the bias materialised as a float mask
  ([B, heads, N, N]); which SDPA kernel that gets is :func:`sdpa_kernel_choice`'s answer.
- ``flex``: FlexAttention with a ``score_mod`` that adds the two small terms ([B, heads, N, H] and
  [B, heads, N, W]) per score, so the N x N bias is never stored; compiled on CUDA. On CPU torch has
  no FlexAttention backward (training there needs ``sdpa`` or ``math``).
- ``math``: the explicit softmax(QK^T * scale + bias) V, the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from timm.models.vision_transformer_sam import Attention
from torch import nn
from torch.nn.attention import SDPBackend

ATTENTION_KERNELS = ("sdpa", "flex", "math")


class RelPosAttention(Attention):
    """timm's SAM ``Attention`` (same parameters and names) with a cached relative index and a kernel choice."""

    kernel: str = "sdpa"

    @classmethod
    def adopt(cls, attention: Attention) -> RelPosAttention:
        """Turn timm's module into this class in place: its parameters, names and device stay as they are."""
        if not attention.use_rel_pos:
            raise ValueError("RelPosAttention needs an attention with relative positions (use_rel_pos=True)")
        attention.__class__ = cls
        return attention  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        qkv = self.qkv(x.reshape(batch, tokens, -1)).view(batch, tokens, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, N, head_dim]
        q, k = self.q_norm(q), self.k_norm(k)
        rel_h, rel_w = self.relative_terms(q, height, width)
        dropout = self.attn_drop.p if self.training else 0.0
        if self.kernel == "flex":
            if dropout:
                raise ValueError("model.attention=flex does not support attention dropout")
            out = _flex_attention(q.device)(q, k, v, score_mod=_decomposed_bias(rel_h, rel_w, width))
        else:
            bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(batch, self.num_heads, tokens, tokens)
            if self.kernel == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
            else:
                attn = ((q * self.scale) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
                out = self.attn_drop(attn) @ v
        out = out.transpose(1, 2).reshape(batch, tokens, -1)
        return self.proj_drop(self.proj(out)).view(batch, height, width, -1)

    def relative_terms(self, q: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``rel_h`` [B, heads, N, H] and ``rel_w`` [B, heads, N, W]: the query's dot products with the
        tables at each key row and column offset (MViTv2's decomposition, as SAM uses it)."""
        batch, heads, _, dim = q.shape
        grid_q = q.reshape(batch, heads, height, width, dim)
        table_h = _resized(self.rel_pos_h, 2 * height - 1)[relative_index(height, q.device)]
        table_w = _resized(self.rel_pos_w, 2 * width - 1)[relative_index(width, q.device)]
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", grid_q, table_h).reshape(
            batch, heads, height * width, height
        )
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", grid_q, table_w).reshape(batch, heads, height * width, width)
        return rel_h, rel_w


@cache
def relative_index(size: int, device: torch.device) -> torch.Tensor:
    """``index[i, j] = i - j + size - 1``: the table row of query ``i`` and key ``j`` (self-attention)."""
    positions = torch.arange(size)
    return (positions[:, None] - positions[None, :] + size - 1).to(device)


def _resized(table: torch.Tensor, length: int) -> torch.Tensor:
    """The relative table linearly interpolated to ``length`` rows (another input size), as SAM does."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.T[None], size=length, mode="linear")
    return resized[0].T


def _decomposed_bias(rel_h: torch.Tensor, rel_w: torch.Tensor, width: int) -> Callable[..., torch.Tensor]:
    def score_mod(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        return score + rel_h[b, h, q_idx, kv_idx // width] + rel_w[b, h, q_idx, kv_idx % width]

    return score_mod


@cache
def _flex_attention(device: torch.device) -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    # Eager FlexAttention materialises the scores (a debugging path); the fused kernel needs compile.
    return torch.compile(flex_attention, dynamic=False) if device.type == "cuda" else flex_attention


def set_attention_kernel(model: nn.Module, kernel: str) -> int:
    """Every :class:`RelPosAttention` of ``model`` uses ``kernel``; returns how many were set."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"model.attention must be one of {ATTENTION_KERNELS}, got {kernel!r}")
    modules = [m for m in model.modules() if isinstance(m, RelPosAttention)]
    for module in modules:
        module.kernel = kernel
    return len(modules)


def sdpa_kernel_choice(
    batch: int,
    heads: int,
    tokens: int,
    head_dim: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
    training: bool = True,
) -> str:
    """Which SDPA backend (FLASH_ATTENTION, EFFICIENT_ATTENTION, CUDNN_ATTENTION, MATH) torch picks for
    attention with a float bias of shape [B, heads, N, N], as a global block calls it (``training``:
    inputs and bias need gradients). Asks the dispatcher (``torch._fused_sdp_choice``) with empty tensors
    of that shape (the choice depends on shapes, dtype, alignment and gradients, not on values)."""
    with torch.device(device):
        q, k, v = (torch.empty(batch, heads, tokens, head_dim, dtype=dtype) for _ in range(3))
        bias = torch.empty(batch, heads, tokens, tokens, dtype=dtype)
    for tensor in (q, k, v, bias):
        tensor.requires_grad_(training)
    return SDPBackend(torch._fused_sdp_choice(q, k, v, bias, 0.0, False)).name
