"""Pretrain `toy-flow`, the toy world's base model as a rectified-flow transformer (SD3's architecture), and save
it as a stock diffusers StableDiffusion3Pipeline folder.

    python -m rewardbooth.experiments.toyworld.pretrain_flow --output runs/toy-flow [--minutes 60] [--init DIR]

What it shares with `toy` (rewardbooth.experiments.toyworld.pretrain), so that a comparison of the two isolates
the denoiser and the process: the same world data (60,000 images, half with an unnamed pattern), `toy`'s
AutoencoderKL weights and its word-level tokenizer. The VAE is saved into this folder with its config's
`shift_factor` and `scaling_factor` set to the mean and 1/std of toy latents (sampled from the posterior of
4,096 world images), as SD3 calibrates its VAE: the transformer sees latents of mean 0 and std 1.

What is SD3's: an SD3Transformer2DModel (MMDiT; patch 2 on 4x16x16 latents = 64 image tokens; 6 blocks, 4 heads
of 32; 3.5 M parameters, stored in fp16 as SD3 ships its weights), two CLIPTextModelWithProjection on the
toy tokenizer (penultimate states concatenated, 64 + 64 = 128 = the joint width; pooled 64 + 64), trained
jointly with the transformer as `toy`'s CLIP is, and no T5 to speak of: T5's slot holds a one-block T5 whose
final norm's weight is zero (`zero_t5`), so its output is exactly the zeros the pipeline puts in T5's place
when there is none (StableDiffusion3Pipeline._get_t5_prompt_embeds). It is there only so that a bare
`StableDiffusion3Pipeline.from_pretrained(folder)` loads: diffusers wants a null text_encoder_3 passed by
hand (`text_encoder_3=None, tokenizer_3=None`), and the folder loads that way too. The loss is the repo's own
SD3 family's: σ from its logit-normal density and its scheduler's shift (rewardbooth.models.flow.FlowProcess),
x_σ = (1 - σ) x0 + σ ε, target v = ε - x0, mean squared error, so pretraining and fine-tuning share σ's density
and target. 10 % empty captions (classifier-free guidance) and an EMA (0.999) of the transformer, as `toy`.

So the pipeline conditions on the CLIP tokens followed by 256 zero tokens (models/sd3.py); training sees
exactly that, with the 256 identical tokens folded into one (models/sd3_padding.py: exact, and the step
costs what 16 context tokens cost: ~0.3 s for batch 32 on one thread, as `toy`'s UNet).

Timestep shift: SD3 trains its 256 px stage (256 image tokens) without a shift and raises it with the token count
above that (Esser et al. 2024 §5.3.2: keeping a constant image's posterior uncertainty σ/√n equal gives the
shift √(m/n) from n to m tokens; 3 at 1024 px, 4,096 tokens). The rule was only ever applied upward; below
1 it would move training toward less noise, and measured here it starves the high noise levels that decide a
toy image's scene (3·√(64/4096) = 0.375 put ~1 % of training σ above 0.8 and drew the right scene 28 % of the
time after 1,643 steps; no shift, 99.5 % after 1,508: docs/toyworld.md). So the shift is s = max(1, 3·√(n/4096)):
SD3's rule where it was used (above ~455 tokens), no shift below; the toy's 64 tokens get 1. It is the saved
scheduler's `shift`, so sampling and the family's training read the same value. (FLUX's dynamic shift, μ linear
in the token count between 256 and 4,096 tokens, extrapolated to 64 gives e^0.47 = 1.6; the line is fitted above
256 tokens only.)

Every `--save-every` steps (and at the end, or when `--minutes` run out) the EMA pipeline is written with a
sample grid and `resume.pt` (the raw weights, EMA and optimizer state, the step), so `--init` continues the
run exactly where it stopped, across sessions. The shipped `toyworld/assets/base-flow` is this script's output
without `resume.pt`; `--init` on such a folder restarts warm at its step (pretrain_state.json): its weights, a
fresh AdamW warmed up again, the cosine where it stood.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from diffusers.training_utils import EMAModel
from transformers import (
    ByT5Tokenizer,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from rewardbooth.evaluation.plots import make_grid
from rewardbooth.experiments.toyworld.pretrain import (
    SAMPLE_PROMPTS,
    add_run_arguments,
    encode_dataset,
    swapped_in,
)
from rewardbooth.models.sd3 import T5_LENGTH, StableDiffusion3, StableDiffusion3Parts
from rewardbooth.models.sd3_padding import folded_padding
from rewardbooth.models.tokenizers import MAX_LENGTH
from rewardbooth.toyworld import world
from rewardbooth.toyworld.assets import BASE_MODEL_DIR
from rewardbooth.toyworld.subjects import random_pattern

logger = logging.getLogger(__name__)

SD3_SHIFT, SD3_TOKENS = 3.0, 4096  # SD3's static shift and the image tokens it is tuned for (1024 px)
FAMILY = StableDiffusion3()


def token_shift(num_tokens: int, reference_shift: float = SD3_SHIFT, reference_tokens: int = SD3_TOKENS) -> float:
    """The timestep shift for `num_tokens` image tokens: s = max(1, s_ref·√(n / n_ref)) (Esser et al. 2024
    §5.3.2, which raises the shift above its unshifted base resolution and never lowers it below 1)."""
    return max(1.0, reference_shift * math.sqrt(num_tokens / reference_tokens))


def latent_calibration(latents: torch.Tensor) -> tuple[float, float]:
    """(shift_factor, scaling_factor) making (z - shift) * scale zero-mean and unit-variance, as SD3's VAE config.
    Shape: latents (N, C, h, w) -> two floats"""
    return float(latents.mean()), float(1 / latents.std())


def calibrated_vae(images, seed: int) -> AutoencoderKL:
    """`toy`'s VAE with the shift and scale of its latents on world images (posterior samples)."""
    vae = AutoencoderKL.from_pretrained(BASE_MODEL_DIR, subfolder="vae").eval().requires_grad_(False)
    mean, std = encode_dataset(vae, images[:4096])
    generator = torch.Generator().manual_seed(seed)
    shift, scale = latent_calibration(mean.float() + std.float() * torch.randn(mean.shape, generator=generator))
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    logger.info("vae latents calibrated: shift_factor %.4f scaling_factor %.4f", shift, scale)
    return vae


def zero_t5(tokenizer: ByT5Tokenizer, width: int) -> T5EncoderModel:
    """A one-block T5 encoder whose output is exactly zero (its final RMS norm's weight is 0): the zeros the
    pipeline uses without T5, from a folder `from_pretrained` loads as it is. Shape: ids (B, L) -> (B, L, width)"""
    t5 = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=16, num_layers=1,
                                 num_heads=1, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id))
    t5.encoder.final_layer_norm.weight.data.zero_()
    return t5.eval().requires_grad_(False)


def make_components(tokenizer: CLIPTokenizer, num_layers: int = 6, num_heads: int = 4, head_dim: int = 32,
                    text_width: int = 64):
    """The transformer, the two CLIPs and the zero T5; the joint width is the two CLIPs' together."""
    def clip() -> CLIPTextModelWithProjection:
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width, num_hidden_layers=2,
            num_attention_heads=4, projection_dim=text_width, max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id))

    latent_side = world.RESOLUTION // 2
    transformer = SD3Transformer2DModel(
        sample_size=latent_side, patch_size=2, in_channels=4, out_channels=4, num_layers=num_layers,
        attention_head_dim=head_dim, num_attention_heads=num_heads, caption_projection_dim=num_heads * head_dim,
        joint_attention_dim=2 * text_width, pooled_projection_dim=2 * text_width, pos_embed_max_size=latent_side)
    return transformer, clip(), clip(), zero_t5(ByT5Tokenizer(), 2 * text_width)


def make_scheduler(shift: float | None = None) -> FlowMatchEulerDiscreteScheduler:
    """SD3's scheduler with the toy's derived shift (or `shift`, for an ablation)."""
    num_tokens = (world.RESOLUTION // 2 // 2) ** 2  # 32 px -> 16x16 latents -> 8x8 patches of 2x2
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
                                           shift=token_shift(num_tokens) if shift is None else shift)


def make_parts(transformer, vae, text_encoders, tokenizer, source: str,
               scheduler: FlowMatchEulerDiscreteScheduler | None = None) -> StableDiffusion3Parts:
    text_encoder, text_encoder_2, text_encoder_3 = text_encoders
    return StableDiffusion3Parts(transformer=transformer, vae=vae, text_encoder=text_encoder,
                                 text_encoder_2=text_encoder_2, text_encoder_3=text_encoder_3, tokenizer=tokenizer,
                                 tokenizer_2=tokenizer, tokenizer_3=ByT5Tokenizer(),
                                 scheduler=scheduler or make_scheduler(), source=source, family_name=FAMILY.name)


def save_pipeline(folder: Path, parts: StableDiffusion3Parts, step: int, resume: dict | None) -> None:
    """The pipeline (transformer in fp16), its sample grid, the step, and what `--init` resumes from."""
    temporary = folder.with_name(folder.name + ".partial")
    pipeline = FAMILY.pipeline(parts)
    pipeline.save_pretrained(temporary)
    copy.deepcopy(parts.transformer).half().save_pretrained(temporary / "transformer")
    images = pipeline(SAMPLE_PROMPTS * 2, num_inference_steps=25, guidance_scale=4.0, height=world.RESOLUTION,
                      width=world.RESOLUTION, generator=torch.Generator().manual_seed(0)).images
    make_grid([image.resize((96, 96), 0) for image in images], columns=4).save(temporary / "samples.png")
    (temporary / "pretrain_state.json").write_text(json.dumps({"transformer_step": step}))
    if resume is not None:
        torch.save(resume, temporary / "resume.pt")
    if folder.exists():
        shutil.rmtree(folder)
    temporary.rename(folder)


def flow_loss(parts: StableDiffusion3Parts, process, x0: torch.Tensor, ids: torch.Tensor,
              generator: torch.Generator) -> torch.Tensor:
    """The family's flow-matching loss ‖v̂ - (ε - x0)‖² at σ from its density, the CLIPs in the step.
    Shape: x0 (B, C, h, w), ids (B, L) -> scalar"""
    noise = torch.randn(x0.shape, generator=generator)
    t = process.sample_timesteps(len(x0), generator)
    # T5's output is zero (`zero_t5`): the family's T5-less conditioning is the same, without running it.
    conditioning = FAMILY.encode_text([parts.text_encoder, parts.text_encoder_2, None], (ids, ids, ids[:, :0]))
    folded = conditioning.embeds["embeds"][:, :ids.shape[1] + 1]  # the CLIP tokens, then one of T5's 256 zeros
    with folded_padding(parts.transformer, T5_LENGTH):
        action = parts.transformer(hidden_states=process.diffuse(x0, noise, t), timestep=t,
                                   encoder_hidden_states=folded, pooled_projections=conditioning.embeds["pooled"],
                                   return_dict=False)[0]
    return F.mse_loss(action.float(), process.target(x0, noise, t))


def start(args, images, tokenizer: CLIPTokenizer) -> tuple[StableDiffusion3Parts, dict]:
    """Fresh components on the calibrated `toy` VAE, or those of `--init` and its resume state."""
    if not args.init:
        transformer, *text_encoders = make_components(tokenizer, args.layers, args.heads, args.head_dim,
                                                      args.text_width)
        return make_parts(transformer, calibrated_vae(images, args.seed), text_encoders, tokenizer, "toy-flow",
                          make_scheduler(args.shift)), {}
    pipeline = StableDiffusion3Pipeline.from_pretrained(args.init)  # its scheduler keeps the run's shift
    parts = make_parts(pipeline.transformer.float(), pipeline.vae,
                       (pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3), tokenizer, str(args.init),
                       pipeline.scheduler)
    resume = torch.load(args.init / "resume.pt") if (args.init / "resume.pt").is_file() else {}
    if resume:
        parts.transformer.load_state_dict(resume["transformer"])
        logger.info("continuing from %s at step %d", args.init, resume["step"])
    else:  # a shipped folder (no resume.pt): its EMA weights are the start, at its step, with a fresh optimizer
        state = args.init / "pretrain_state.json"
        step = json.loads(state.read_text())["transformer_step"] if state.is_file() else -1
        resume = {"step": step, "restart": step + 1}
        logger.info("warm restart from %s at step %d: fresh optimizer, %d-step warmup", args.init, step + 1, WARMUP)
    return parts, resume


WARMUP = 500


def learning_rate_factor(step: int, restart: int, steps: int) -> float:
    """Linear warmup over WARMUP steps from `restart` (0, or where a fresh optimizer took over), times a cosine
    over the whole run's `steps`."""
    return min(1.0, (step - restart + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1)))


def train(parts: StableDiffusion3Parts, latents, token_ids, args, resume: dict, deadline: float) -> None:
    """The flow-matching loss with the text encoders in the step; EMA of the transformer; periodic saves."""
    process = FAMILY.process(parts)
    modules = (parts.transformer, parts.text_encoder, parts.text_encoder_2)
    for module in modules:
        module.train().requires_grad_(True)
    parameters = [p for module in modules for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=1e-2, fused=True)
    restart = resume.get("restart", 0)  # a fresh optimizer warms up again, wherever the cosine stands
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, restart, args.steps))
    ema = EMAModel(parts.transformer.parameters(), decay=0.999)
    first = resume.get("step", -1) + 1
    if "optimizer" in resume:
        ema.load_state_dict(resume["ema"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
    elif first:  # put the fresh schedule at the folder's step
        schedule.last_epoch = first
        for group, base in zip(optimizer.param_groups, schedule.base_lrs):
            group["lr"] = base * learning_rate_factor(first, restart, args.steps)
    generator = torch.Generator().manual_seed(args.seed + 1 + first)  # a resumed run draws new batches
    empty = FAMILY.tokenize(parts.tokenizers, [""])[0][0]
    mean, std = latents
    latent_space, started = FAMILY.latent_space(parts), time.time()
    for step in range(first, args.steps):
        index = torch.randint(len(mean), (args.batch_size,), generator=generator)
        x0 = latent_space.from_vae(mean[index].float() + std[index].float() * torch.randn(mean[index].shape,
                                                                                          generator=generator))
        ids = token_ids[index].clone()
        ids[torch.rand(args.batch_size, generator=generator) < 0.1] = empty  # for classifier-free guidance
        loss = flow_loss(parts, process, x0, ids, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        ema.step(parts.transformer.parameters())
        last = step == args.steps - 1 or time.time() > deadline
        if step % 100 == 0 or last:
            logger.info("step %d/%d loss %.4f lr %.2e %.3f s/step", step, args.steps, loss.item(),
                        schedule.get_last_lr()[0], (time.time() - started) / (step - first + 1))
        if (step and step % args.save_every == 0) or last:
            state = {"step": step, "restart": restart, "transformer": parts.transformer.state_dict(), "ema": ema.state_dict(),
                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}
            for module in modules:
                module.eval()
            with swapped_in(ema, parts.transformer), torch.no_grad():
                save_pipeline(args.output, parts, step, state)
            for module in modules:
                module.train()
            logger.info("saved %s at step %d", args.output, step)
        if last:
            return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(parser, lr=3e-4, init_help="continue from a folder this script wrote: exactly with its resume.pt (step, EMA, optimizer), "
                      "else from its weights and step with a fresh optimizer (the shipped folder)")
    parser.add_argument("--steps", type=int, default=20_000, help="the cosine schedule's length (resumed runs too)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--shift", type=float, help="timestep shift (default: derived from the token count: 1 for the toy's 64 tokens)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--text-width", type=int, default=64, help="each CLIP's width (the joint width is twice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    deadline = time.time() + args.minutes * 60
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, captions, _ = world.make_dataset(args.seed, args.num_images, drop=0.3, pattern_share=args.pattern_share,
                                             pattern_sampler=random_pattern)
    logger.info("generated %d world images (%.0f %% with a random pattern)", len(images), 100 * args.pattern_share)
    tokenizer = CLIPTokenizer.from_pretrained(BASE_MODEL_DIR, subfolder="tokenizer")
    parts, resume = start(args, images, tokenizer)
    logger.info("parameters: transformer %.2f M, text encoders %.2f M + %.2f M; shift %.3f",
                *(sum(p.numel() for p in m.parameters()) / 1e6
                  for m in (parts.transformer, parts.text_encoder, parts.text_encoder_2)), parts.scheduler.config.shift)
    latents = encode_dataset(parts.vae, images)
    token_ids = FAMILY.tokenize(parts.tokenizers, captions)[0]
    train(parts, latents, token_ids, args, resume, deadline)


if __name__ == "__main__":
    main()
