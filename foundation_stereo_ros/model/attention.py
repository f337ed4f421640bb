"""Scaled dot-product attention over the disparity tokens (Sec. 3.3).

The published weights were trained with FlashAttention on (batch, tokens, heads, head_dim)
tensors, i.e. attention over tokens. ``F.scaled_dot_product_attention`` expects
(batch, heads, tokens, head_dim); passing it the flash layout would attend across heads,
which is a different network. Both paths here attend over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional: only on CUDA machines that have it installed
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _flash_attn_func = None


def flash_attention_available() -> bool:
    return _flash_attn_func is not None


def attention_over_tokens(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for (B, L, heads, head_dim) tensors, over the L tokens."""
    if (_flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)):
        return _flash_attn_func(q, k, v)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)  # (B, L, heads, head_dim)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax(QK^T/sqrt(d))V over tokens, the definition the fast paths must match."""
    qh, kh, vh = (t.transpose(1, 2).float() for t in (q, k, v))  # (B, heads, L, d)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ vh).transpose(1, 2).to(q.dtype)
