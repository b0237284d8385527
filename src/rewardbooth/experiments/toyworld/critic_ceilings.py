"""How much of an image reward's gradient can each critic carry at best? Its ceiling, computed exactly.

    python -m rewardbooth.experiments.toyworld.critic_ceilings --output benchmarks/toyworld/critics

Whatever a critic learns, its gradient in x0_hat lies in a fixed subspace when its input is a fixed map of
x0_hat: `pooled` reads per-channel means and mean squares (8 numbers for 4 channels), so dQ/dx0_hat lies in
span{1_c, x0_hat_c}; the feature critic reads e = f(decode(x0_hat)), so dQ/dx0_hat = J^T dQ/de lies in the row
space of the Jacobian J (D x 1,024 on the toy). The best cosine any such critic can reach with the reward's
gradient g is |P g| / |g|, P the projection on that subspace: its ceiling. (The look-forward step is a scalar
times the identity per sample, so the ceiling in the action a is the one in x0_hat.)

States: the shipped base model's x0_hat of tuning subject 1's photos (never a reported subject), noised at t
uniform in [50, 950] and denoised once with the instance prompt; the reward is the reward judge's identity
cosine (`toy_identity`). Encoders: `toy_encoder` (the feature critic's, trained apart), the reward judge itself
(the oracle: its ceiling must be 1, since r is linear in its features) and an untrained network of the same
architecture (generic features). Writes ceilings.json and ceilings.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from rewardbooth.maths.similarity import centroid
from rewardbooth.toyworld import subjects
from rewardbooth.toyworld.judge import Judge, load_judge, to_tensor

STUDY_SUBJECT, NUM_STATES = 1, 24


def projected_share(gradient: torch.Tensor, span: torch.Tensor) -> float:
    """|P g| / |g| for P the orthogonal projection on the span of the rows of `span`.

    Shape: gradient (N,), span (K, N) -> float in [0, 1]
    """
    basis, _ = torch.linalg.qr(span.double().T)  # (N, K) orthonormal columns (rank-deficient rows add zeros)
    projected = basis @ (basis.T @ gradient.double())
    return float(projected.norm() / gradient.double().norm())


def pooled_span(x0_hat: torch.Tensor) -> torch.Tensor:
    """The directions dQ/dx0_hat of any function of per-channel means and mean squares can take.

    Shape: x0_hat (C, h, w) -> (2C, C*h*w)
    """
    rows = []
    for channel in range(x0_hat.shape[0]):
        indicator = torch.zeros_like(x0_hat)
        indicator[channel] = 1
        rows += [indicator.flatten(), (indicator * x0_hat).flatten()]
    return torch.stack(rows)


def feature_span(embed: Callable[[torch.Tensor], torch.Tensor], x0_hat: torch.Tensor) -> torch.Tensor:
    """The Jacobian of the encoder's features in x0_hat: its rows span every feature critic's gradient.

    Shape: x0_hat (C, h, w) -> (D, C*h*w)
    """
    jacobian = torch.autograd.functional.jacobian(lambda x: embed(x[None])[0], x0_hat)  # (D, C, h, w)
    return jacobian.flatten(1)


def base_model_states(count: int, seed: int = 0) -> tuple[list[torch.Tensor], Callable, torch.Tensor]:
    """x0_hat of the base model on the study subject's photos, the decoder, and the photos themselves."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from rewardbooth.toyworld.assets import BASE_MODEL_DIR

    pipeline = StableDiffusionPipeline.from_pretrained(BASE_MODEL_DIR, safety_checker=None)
    vae, unet = pipeline.vae.eval(), pipeline.unet.eval()
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config, clip_sample=False)
    subject = subjects.make_subject(STUDY_SUBJECT)
    photos = to_tensor(np.stack([np.asarray(image) for image in subjects.reference_images(subject)]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        text, _ = pipeline.encode_prompt(subjects.instance_prompt(subject), "cpu", 1, False)
        x0 = vae.encode(photos * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        states = []
        for index in range(count):
            t = torch.randint(50, 950, (1,), generator=generator)
            latent = x0[index % len(x0)][None]
            noise = torch.randn(latent.shape, generator=generator)
            x_t = scheduler.add_noise(latent, noise, t)
            action = unet(x_t, t, text).sample
            states.append(scheduler.step(action, int(t), x_t).pred_original_sample[0])

    def decode(latents: torch.Tensor) -> torch.Tensor:
        return ((vae.decode(latents / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)

    return states, decode, photos


def ceilings(count: int = NUM_STATES) -> dict[str, list[float]]:
    from rewardbooth.toyworld.assets import FEATURE_ENCODER_DIR, JUDGE_DIR

    states, decode, photos = base_model_states(count)
    reward_judge = load_judge(JUDGE_DIR).requires_grad_(False)
    center = centroid(reward_judge(photos)[0]).detach()
    torch.manual_seed(0)
    encoders = {"toy_encoder": load_judge(FEATURE_ENCODER_DIR), "reward judge (oracle)": reward_judge,
                "untrained network": Judge(500).eval()}
    results: dict[str, list[float]] = {"pooled": [], **{name: [] for name in encoders}}
    for x0_hat in states:
        x0_hat = x0_hat.detach().requires_grad_(True)
        reward = reward_judge(decode(x0_hat[None]))[0][0] @ center
        (gradient,) = torch.autograd.grad(reward, x0_hat)
        gradient = gradient.flatten()
        results["pooled"].append(projected_share(gradient, pooled_span(x0_hat.detach())))
        for name, network in encoders.items():
            network.requires_grad_(False)
            span = feature_span(lambda x, n=network: n(decode(x))[0], x0_hat.detach())
            results[name].append(projected_share(gradient, span))
    return results


def summarize(results: dict[str, list[float]]) -> str:
    lines = [f"Ceiling of cos(dQ/dx0_hat, dr/dx0_hat) per critic input, toy identity reward, {len(results['pooled'])} "
             f"base-model states of subject {STUDY_SUBJECT}: mean [min, max]", "",
             "| critic reads | span | ceiling |", "|---|---|---|"]
    spans = {"pooled": "8 (per-channel mean, mean square)"}
    for name, values in results.items():
        span = spans.get(name, "64 (the encoder's features)")
        lines.append(f"| {name} | {span} | {statistics.fmean(values):.3f} [{min(values):.3f}, {max(values):.3f}] |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Exact ceilings of critics' gradient cosines (toy world).")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--states", type=int, default=NUM_STATES)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(True)
    results = ceilings(args.states)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "ceilings.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.output / "ceilings.md").write_text(summarize(results))
    print(summarize(results))


if __name__ == "__main__":
    main()
