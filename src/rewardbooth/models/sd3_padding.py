"""Training an SD3 transformer without T5 at the cost of its CLIP tokens: the pipeline's 256 zero tokens in T5's
place (rewardbooth.models.sd3) folded into one.

Why it is exact: the zero tokens enter the MMDiT as one vector (the context embedder of zero, its bias), carry
no position embedding, and every operation on the context stream except attention is token-wise, so the 256
stay identical through every block. In the joint attention, n identical keys and values contribute
n·exp(q·k/√d)·v to the numerator and n·exp(q·k/√d) to the softmax's denominator: one token whose logit is
raised by log n (an additive attention bias) does the same. Adapted from diffusers' JointAttnProcessor2_0
(diffusers/models/attention_processor.py), with the bias as the only change; tests/unit/test_sd3_padding.py
checks the folded call against the stock one with all 256 tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel


class FoldedJointAttnProcessor:
    """JointAttnProcessor2_0 where the context's last token stands for `copies` identical tokens."""

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def _heads(self, attn, x: torch.Tensor, project, norm) -> torch.Tensor:
        """Shape: (B, L, H*d) -> (B, H, L, d)"""
        x = project(x)
        x = x.view(x.shape[0], -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)
        return x if norm is None else norm(x)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: hidden_states (B, N, D), encoder_hidden_states (B, L, D) -> (B, N, D), (B, L, D)"""
        batch, num_image = hidden_states.shape[:2]
        query = torch.cat([self._heads(attn, hidden_states, attn.to_q, attn.norm_q),
                           self._heads(attn, encoder_hidden_states, attn.add_q_proj, attn.norm_added_q)], dim=2)
        key = torch.cat([self._heads(attn, hidden_states, attn.to_k, attn.norm_k),
                         self._heads(attn, encoder_hidden_states, attn.add_k_proj, attn.norm_added_k)], dim=2)
        value = torch.cat([self._heads(attn, hidden_states, attn.to_v, None),
                           self._heads(attn, encoder_hidden_states, attn.add_v_proj, None)], dim=2)
        bias = torch.zeros(1, key.shape[2], dtype=query.dtype, device=query.device)
        bias[0, -1] = self.log_copies  # n identical keys: one key with logit + log n (module docstring)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        image, context = out[:, :num_image], out[:, num_image:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context


@contextlib.contextmanager
def folded_padding(transformer: SD3Transformer2DModel, copies: int) -> Iterator[None]:
    """Inside, the transformer takes the context with its trailing `copies` identical tokens given as one."""
    stock = transformer.attn_processors
    transformer.set_attn_processor(FoldedJointAttnProcessor(copies))
    try:
        yield
    finally:
        transformer.set_attn_processor(stock)
