"""Folding SD3's 256 zero tokens in T5's place into one (models/sd3_padding.py) changes nothing but the cost."""

import torch
from diffusers import SD3Transformer2DModel

from rewardbooth.models.sd3 import T5_LENGTH
from rewardbooth.models.sd3_padding import folded_padding


def test_folded_zero_tokens_give_the_stock_transformers_output_and_gradient():
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=16, pooled_projection_dim=16, pos_embed_max_size=8)
    x, pooled, t = torch.randn(2, 4, 8, 8), torch.randn(2, 16), torch.tensor([100.0, 900.0])
    clip = torch.randn(2, 5, 16)
    stock_context = torch.cat([clip, torch.zeros(2, T5_LENGTH, 16)], dim=1)
    stock = transformer(x, stock_context, pooled, t).sample
    stock_grad = torch.autograd.grad(stock.square().sum(), transformer.context_embedder.bias)[0]
    with folded_padding(transformer, T5_LENGTH):
        folded = transformer(x, stock_context[:, :6], pooled, t).sample
        folded_grad = torch.autograd.grad(folded.square().sum(), transformer.context_embedder.bias)[0]
    torch.testing.assert_close(folded, stock, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(folded_grad, stock_grad, rtol=1e-4, atol=1e-4)
    assert type(next(iter(transformer.attn_processors.values()))).__name__ == "JointAttnProcessor2_0"  # restored
    with folded_padding(transformer, 1):  # the bias is what makes it exact: one copy is another model
        assert not torch.allclose(transformer(x, stock_context[:, :6], pooled, t).sample, stock, atol=1e-3)
