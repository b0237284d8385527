"""Text conditioning of the UNet for both model families, computed exactly as diffusers' pipelines do.

- Stable Diffusion 1.x/2.x: one CLIP text encoder; the UNet attends to its last hidden state.
- SDXL: two encoders; the UNet attends to their *penultimate* hidden states concatenated (768 + 1280 = 2048
  dims for SDXL 1.0), and its added "text_time" embedding takes the second encoder's pooled projection plus
  six size/crop ids (original height, width, crop top, left, target height, width; Podell et al. 2023, §2.2).

A batch's conditioning is a dict: precomputed `embeds` (B, L, D) [+ `pooled` (B, P) for SDXL] when the text
encoders are frozen, or `token_ids` (B, E, L), one row per tokenizer, when they train and must run each step.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTokenizer


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Shape: -> (B, L) token ids, padded to the tokenizer's max length as Stable Diffusion is trained."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def tokenize_prompts(tokenizers: list, prompts: list[str]) -> torch.Tensor:
    """Padded to each tokenizer's max length, as both families are trained. Shape: -> (B, E, L)"""
    ids = [tokenize(tokenizer, prompts) for tokenizer in tokenizers]
    if len({row.shape[-1] for row in ids}) > 1:
        raise ValueError(f"the tokenizers pad to different lengths {[row.shape[-1] for row in ids]}")
    return torch.stack(ids, dim=1)


def encode_prompts(encoders: list[nn.Module], token_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run the text encoder(s); with two (SDXL), also return the second one's pooled projection.

    Shape: token_ids (B, E, L) -> {"embeds": (B, L, D), "pooled": (B, P) for SDXL}
    """
    if len(encoders) == 1:
        encoder = encoders[0]
        return {"embeds": encoder(token_ids[:, 0].to(_device(encoder)))[0]}
    hidden = []
    for index, encoder in enumerate(encoders):
        output = encoder(token_ids[:, index].to(_device(encoder)), output_hidden_states=True)
        hidden.append(output.hidden_states[-2])
    # CLIPTextModelWithProjection's first output is text_embeds: the pooled, projected EOS feature.
    return {"embeds": torch.cat(hidden, dim=-1), "pooled": output[0]}


def unet_inputs(conditioning: dict[str, torch.Tensor], encoders: list[nn.Module] | None,
                sizes: torch.Tensor | None) -> tuple[torch.Tensor, dict]:
    """The UNet's `encoder_hidden_states` and its extra keyword arguments (SDXL's `added_cond_kwargs`).

    Token ids run through the (training) encoders here, so their gradient reaches the encoders."""
    if "token_ids" in conditioning:
        conditioning = encode_prompts(encoders, conditioning["token_ids"])
    embeds = conditioning["embeds"]
    if "pooled" not in conditioning:
        return embeds, {}
    if sizes is None:
        raise ValueError("an SDXL batch (pooled text embedding) needs the size ids")
    time_ids = sizes.to(embeds.device).expand(len(embeds), -1)
    return embeds, {"added_cond_kwargs": {"text_embeds": conditioning["pooled"], "time_ids": time_ids}}


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
