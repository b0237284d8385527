"""Pretrain the toy world's base model and save it as a stock diffusers Stable Diffusion folder.

    python -m rewardbooth.experiments.toyworld.pretrain --output runs/toy-base [--minutes 60] [--init runs/earlier-base]

Stage 1 trains a small AutoencoderKL (32 px -> 4x16x16 latents) on world images; stage 2 trains a CLIP text
encoder (the world's word-level tokenizer) jointly with a UNet2DConditionModel on the cached latents, with
10 % empty captions so classifier-free guidance works, and an EMA of the UNet. Every `--save-every` steps the
EMA pipeline is written (so a time limit never loses the run) with a sample grid. The shipped weights under
`rewardbooth/toyworld/assets/base` are this script's output.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel

from rewardbooth.evaluation.plots import make_grid
from rewardbooth.models.builtin import SD_SCHEDULE
from rewardbooth.models.ddpm import DDPMProcess
from rewardbooth.models.families import LatentSpace
from rewardbooth.models.stable_diffusion import tokenize
from rewardbooth.models.tokenizers import MAX_LENGTH, make_world_tokenizer
from rewardbooth.toyworld import world
from rewardbooth.toyworld.subjects import random_pattern

logger = logging.getLogger(__name__)

SAMPLE_PROMPTS = ["a red ball on the beach", "a blue box in the snow", "a large yellow star at night",
                  "a green cone on the grass"]


def make_components(vocab_size: int, bos: int, eos: int):
    """Sized for a CPU hour: ~0.3 s per batch-32 UNet step on 2 cores (see docs/toyworld.md)."""
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=world.RESOLUTION)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos))
    # Cross-attention at 8x8 and 4x4 only: attention at 16x16 would double the step for little gain here.
    unet = UNet2DConditionModel(
        sample_size=world.RESOLUTION // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 96), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                                                            "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
        attention_head_dim=8, norm_num_groups=16)
    return vae, text_encoder, unet


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(vae: AutoencoderKL, images: np.ndarray, steps: int, batch_size: int, seed: int) -> AutoencoderKL:
    """Reconstruction (L1 + L2) with a small KL term, then the latent scaling factor (Rombach et al. §3)."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0, fused=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    for step in range(steps):
        pixels = to_pixels(images[torch.randint(len(images), (batch_size,), generator=generator).numpy()])
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        loss = F.l1_loss(reconstruction, pixels) + F.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            logger.info("vae step %d/%d loss %.4f", step, steps, loss.item())
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        sample = torch.cat([vae.encode(to_pixels(images[i:i + 256])).latent_dist.mean
                            for i in range(0, min(2048, len(images)), 256)])
    vae.register_to_config(scaling_factor=float(1 / sample.std()))
    return vae


@torch.no_grad()
def encode_dataset(vae: AutoencoderKL, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for start in range(0, len(images), 512):
        posterior = vae.encode(to_pixels(images[start:start + 512])).latent_dist
        means.append(posterior.mean.half())
        stds.append(posterior.std.half())
    return torch.cat(means), torch.cat(stds)


def save_pipeline(folder: Path, vae, text_encoder, unet, tokenizer, step: int) -> None:
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=DDIMScheduler(**SD_SCHEDULE), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    temporary = folder.with_name(folder.name + ".partial")
    pipeline.save_pretrained(temporary)
    images = pipeline(SAMPLE_PROMPTS * 2, num_inference_steps=25, guidance_scale=4.0, height=world.RESOLUTION,
                      width=world.RESOLUTION, generator=torch.Generator().manual_seed(0)).images
    make_grid([image.resize((96, 96), 0) for image in images], columns=4).save(temporary / "samples.png")
    (temporary / "pretrain_state.json").write_text(json.dumps({"unet_step": step}))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    temporary.rename(folder)


def train_unet(vae, text_encoder, unet, tokenizer, latents, token_ids, args, output: Path, deadline: float):
    """Denoising (epsilon) loss on the SD-1 schedule; text encoder trained jointly; EMA weights are saved."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k not in ("set_alpha_to_one", "steps_offset")})
    process, latent_space = DDPMProcess.from_scheduler_config(scheduler.config), LatentSpace.of(vae)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-2, fused=True)
    warmup = 500
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s / args.unet_steps, 1))))
    ema = EMAModel(unet.parameters(), decay=0.999)
    empty = tokenize(tokenizer, [""])[0]
    mean, std = latents
    for step in range(args.unet_steps):
        index = torch.randint(len(mean), (args.batch_size,), generator=generator)
        x0 = latent_space.from_vae(mean[index].float() + std[index].float() * torch.randn(mean[index].shape,
                                                                                          generator=generator))
        ids = token_ids[index].clone()
        ids[torch.rand(args.batch_size, generator=generator) < 0.1] = empty  # for classifier-free guidance
        noise = torch.randn(x0.shape, generator=generator)
        t = process.sample_timesteps(args.batch_size, generator)
        x_t = process.diffuse(x0, noise, t)
        prediction = unet(x_t, t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(unet.parameters())
        last = step == args.unet_steps - 1 or time.time() > deadline
        if step % 100 == 0 or last:
            logger.info("unet step %d/%d loss %.4f lr %.2e", step, args.unet_steps, loss.item(), schedule.get_last_lr()[0])
        if (step and step % args.save_every == 0) or last:
            with swapped_in(ema, unet):
                save_pipeline(output, vae, text_encoder, unet, tokenizer, step)
            logger.info("saved %s at step %d", output, step)
        if last:
            return


class swapped_in:
    """Evaluate with the EMA weights, then restore the training weights."""

    def __init__(self, ema: EMAModel, model: torch.nn.Module):
        self.ema, self.model = ema, model

    def __enter__(self):
        self.ema.store(self.model.parameters())
        self.ema.copy_to(self.model.parameters())

    def __exit__(self, *exc):
        self.ema.restore(self.model.parameters())


def add_run_arguments(parser: argparse.ArgumentParser, lr: float, init_help: str) -> None:
    """The options both toy pretraining scripts take: data, batch, rate, saving, time limit, continuation."""
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--num-images", type=int, default=60_000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--save-every", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=float("inf"), help="stop (and save) after this long")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pattern-share", type=float, default=0.5,
                        help="share of images whose body carries a random pattern (unnamed in the caption)")
    parser.add_argument("--init", type=Path, help=init_help)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, lr=5e-4, init_help="continue from a folder this script wrote (all three models)")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--unet-steps", type=int, default=20_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    deadline = time.time() + args.minutes * 60
    torch.manual_seed(args.seed)

    images, captions, _ = world.make_dataset(args.seed, args.num_images, drop=0.3, pattern_share=args.pattern_share,
                                             pattern_sampler=random_pattern)
    logger.info("generated %d world images (%.0f %% with a random pattern)", len(images), 100 * args.pattern_share)
    tokenizer = make_world_tokenizer(world.VOCABULARY)
    if args.init:
        vae = AutoencoderKL.from_pretrained(args.init, subfolder="vae").train().requires_grad_(True)
        text_encoder = CLIPTextModel.from_pretrained(args.init, subfolder="text_encoder")
        unet = UNet2DConditionModel.from_pretrained(args.init, subfolder="unet")
        logger.info("continuing from %s", args.init)
    else:
        vae, text_encoder, unet = make_components(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    logger.info("parameters: vae %.2f M, text encoder %.2f M, unet %.2f M",
                *(sum(p.numel() for p in m.parameters()) / 1e6 for m in (vae, text_encoder, unet)))
    vae = train_vae(vae, images, args.vae_steps, args.batch_size, args.seed)
    latents = encode_dataset(vae, images)
    token_ids = tokenize(tokenizer, captions)
    train_unet(vae, text_encoder, unet, tokenizer, latents, token_ids, args, args.output, deadline)


if __name__ == "__main__":
    main()
