"""Custom Diffusion (Kumari et al. 2023): train only the cross-attention key/value projections (or all of
cross-attention) plus the embedding of a new modifier token per concept, `data.identifier` (e.g. "<new1>")
and each of `data.concepts`' identifiers ("<new2>", ...: multi-concept training, the paper's §3.2);
everything else stays frozen. Saved in the files stock diffusers loads:
`pipeline.unet.load_attn_procs(dir, weight_name="pytorch_custom_diffusion_weights.safetensors")` and, per
token, `pipeline.load_textual_inversion(dir, weight_name="<new1>.safetensors")`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor
from safetensors.torch import save_file
from torch import nn

from rewardbooth.core.config import Config
from rewardbooth.core.errors import UserError
from rewardbooth.data.concepts import concepts_of
from rewardbooth.methods.base import methods
from rewardbooth.models import StableDiffusionParts

WEIGHT_NAME = "pytorch_custom_diffusion_weights.safetensors"


def custom_processors(unet: nn.Module, train_q_out: bool) -> dict[str, CustomDiffusionAttnProcessor]:
    """One processor per attention layer: cross-attention ones carry trainable copies of K/V (and Q/out),
    initialised from the layer's own weights so training starts at the base model; self-attention ones
    train nothing (diffusers' train_custom_diffusion.py does the same)."""
    state = unet.state_dict()
    processors = {}
    for name in unet.attn_processors:
        layer = name.removesuffix(".processor")
        key_weight = state[f"{layer}.to_k.weight"]
        hidden_size, context_size = key_weight.shape
        if name.endswith("attn1.processor"):  # self-attention
            processors[name] = CustomDiffusionAttnProcessor(train_kv=False, train_q_out=False,
                                                            hidden_size=hidden_size)
            continue
        processor = CustomDiffusionAttnProcessor(train_kv=True, train_q_out=train_q_out, hidden_size=hidden_size,
                                                 cross_attention_dim=context_size)
        weights = {"to_k_custom_diffusion.weight": key_weight, "to_v_custom_diffusion.weight": state[f"{layer}.to_v.weight"]}
        if train_q_out:
            weights.update({"to_q_custom_diffusion.weight": state[f"{layer}.to_q.weight"],
                            "to_out_custom_diffusion.0.weight": state[f"{layer}.to_out.0.weight"],
                            "to_out_custom_diffusion.0.bias": state[f"{layer}.to_out.0.bias"]})
        processor.load_state_dict(weights)
        processors[name] = processor
    return processors


@methods.register("custom_diffusion")
class CustomDiffusion:
    """Cross-attention K/V (or all cross-attention) and one new token's embedding per concept train."""

    adapters_only = False  # the new embedding row lives inside the text encoder's table: keep it fp32

    def __init__(self, parts: StableDiffusionParts, config: Config):
        if parts.family.name != "stable-diffusion":  # one tokenizer's new token, a UNet's cross-attention K/V
            raise UserError(f"method.name=custom_diffusion supports Stable Diffusion 1.x/2.x models; for this "
                            f"{parts.family.name} model use method.name=lora or method.name=dreambooth")
        self.tokens = [concept.identifier for concept in concepts_of(config.data)]
        for token in self.tokens:
            if parts.tokenizer.add_tokens(token) != 1:
                raise UserError(f"custom_diffusion learns a new token, but the identifier {token!r} is already in "
                                f"the tokenizer: use a new one such as data.identifier='<new1>'")
        self.token_ids = parts.tokenizer.convert_tokens_to_ids(self.tokens)
        parts.text_encoder.resize_token_embeddings(len(parts.tokenizer))
        embeddings = parts.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            ids = parts.tokenizer(config.method.custom_diffusion.initializer_token, add_special_tokens=False).input_ids
            embeddings[self.token_ids] = embeddings[ids].mean(dim=0)
        self.original_embeddings = embeddings.detach().clone()

        for module in (parts.vae, parts.unet, parts.text_encoder):
            module.requires_grad_(False)
        train_q_out = config.method.custom_diffusion.params == "crossattn"
        parts.unet.set_attn_processor(custom_processors(parts.unet, train_q_out))
        for processor in parts.unet.attn_processors.values():
            processor.requires_grad_(True)
        embeddings.requires_grad_(True)
        self.embeddings = embeddings
        self.trainable: dict[str, nn.Module] = {"unet": parts.unet, "text_encoder": parts.text_encoder}

    @torch.no_grad()
    def after_step(self) -> None:
        """Only the new tokens' rows may move: put every other row back (the optimizer's weight decay and
        momentum would otherwise drift the whole vocabulary)."""
        keep = torch.ones(len(self.embeddings), dtype=torch.bool, device=self.embeddings.device)
        keep[self.token_ids] = False
        self.embeddings[keep] = self.original_embeddings.to(self.embeddings.device)[keep]

    def save(self, parts: StableDiffusionParts, output_dir: Path) -> None:
        parts.unet.save_attn_procs(output_dir, weight_name=WEIGHT_NAME, safe_serialization=True)
        table = parts.text_encoder.get_input_embeddings().weight
        for token, token_id in zip(self.tokens, self.token_ids):
            save_file({token: table[token_id].detach().float().cpu().contiguous()},
                      str(output_dir / f"{token}.safetensors"))

    @staticmethod
    def loading_code(base: str, result_dir: Path) -> str:
        tokens = "".join(f"\npipeline.load_textual_inversion(here, weight_name={path.name!r})"
                         for path in sorted(result_dir.glob("<*>.safetensors")))
        return (f"pipeline = DiffusionPipeline.from_pretrained({base!r})\n"
                f"pipeline.unet.load_attn_procs(here, weight_name={WEIGHT_NAME!r}){tokens}")

    @staticmethod
    def load_result(pipeline: StableDiffusionPipeline, output_dir: Path) -> StableDiffusionPipeline:
        pipeline.unet.load_attn_procs(str(output_dir), weight_name=WEIGHT_NAME)
        for embedding_file in sorted(Path(output_dir).glob("<*>.safetensors")):
            pipeline.load_textual_inversion(str(output_dir), weight_name=embedding_file.name)
        return pipeline
