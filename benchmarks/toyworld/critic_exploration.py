"""Can a critic learn the toy identity reward's gradient? An offline check of three ways to train it.

    python benchmarks/toyworld/critic_exploration.py values 0 0.1 conv 1e-4     # on-policy values only
    python benchmarks/toyworld/critic_exploration.py values 4 0.1 conv 1e-3     # + 4 antithetic explorations
    python benchmarks/toyworld/critic_exploration.py difference 4 0.1 conv 1e-3 # + their finite differences
    python benchmarks/toyworld/critic_exploration.py tnorm 0 0.1 conv 1e-3      # per-t-normalised reward

States are x0_hat of the shipped toy base model on toy subject 1 (a tuning subject) at random t; the reward
is `toy_identity`. A critic on x0_hat (`critic.input=prediction`) trains for 600 steps of batch 1, as in a
run; printed: cos(dQ/dx0_hat, dr/dx0_hat) and the norm ratio over 48 held-out states (docs/critic.md).
The model is seen only through its family and process (diffuse, look_forward, denoise), as the loop sees it.

    python benchmarks/toyworld/critic_exploration.py values 2 0.1 conv 1e-3 --steps 3 --held-out 2  # smoke run
"""

import argparse
from functools import partial

import numpy as np
import torch

from rewardbooth.core.config import CriticConfig, ModelConfig
from rewardbooth.maths import dpg
from rewardbooth.models import load_model
from rewardbooth.rewards import RewardContext, RewardSetup, make_reward
from rewardbooth.toyworld import subjects
from rewardbooth.training.batches import decode_latents, encode_posteriors
from rewardbooth.training.critic import CriticSpec, make_critic, make_critic_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("loss", choices=["values", "difference", "tnorm"])
    parser.add_argument("explorations", type=int, help="antithetic perturbation pairs per step")
    parser.add_argument("sigma", type=float, help="perturbation scale in latent units")
    parser.add_argument("critic", choices=["conv", "pooled", "released"])
    parser.add_argument("lr", type=float)
    parser.add_argument("--steps", type=int, default=600, help="critic training steps (batch 1)")
    parser.add_argument("--held-out", type=int, default=48, help="held-out states scored at the end")
    args = parser.parse_args()
    torch.set_num_threads(1)
    parts = load_model(ModelConfig("toy"))
    process, latent_space = parts.process, parts.latent_space
    subject = subjects.make_subject(1)
    photos = torch.stack([torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
                          for image in subjects.reference_images(subject)])
    reward = make_reward("toy_identity", RewardSetup(photos, subjects.IDENTIFIER, torch.device("cpu")))
    mean, std = encode_posteriors(parts.vae, photos)
    with torch.no_grad():
        token_ids = parts.family.tokenize(parts.tokenizers, [subjects.instance_prompt(subject)])
        conditioning = parts.family.encode_text(parts.text_encoders, token_ids)
    micro = parts.family.micro_conditioning(photos.shape[-1])

    def score(x0_hat, x0):
        return reward(x0_hat, RewardContext(x0=x0, prompts=["-"] * len(x0),
                                            decode=partial(decode_latents, parts.vae, latent_space))).scores

    def state(generator):
        index = torch.randint(len(mean), (1,), generator=generator)
        x0 = latent_space.from_vae(mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator))
        noise, t = torch.randn(x0.shape, generator=generator), process.sample_timesteps(1, generator)
        x_t = process.diffuse(x0, noise, t)
        with torch.no_grad():
            action, _ = parts.family.denoise(parts.denoiser, x_t, t, conditioning, None, micro)
        return x0, process.look_forward(x_t, action, t), t

    held_out = [state(torch.Generator().manual_seed(5)) for _ in range(args.held_out)]
    torch.manual_seed(0)
    config = CriticConfig(name=args.critic, input="prediction", lr=args.lr)
    critic = make_critic(CriticSpec(4, (16, 16)), config)
    optimizer = make_critic_optimizer(critic, config)
    generator, bucket_mean, bucket_count = torch.Generator().manual_seed(1), torch.zeros(10), torch.zeros(10)
    for _ in range(args.steps):
        x0, x0_hat, t = state(generator)
        with torch.no_grad():
            r = score(x0_hat, x0)
        if args.loss == "tnorm":  # regress the deviation from a running mean per tenth of the t range
            bucket = (t.long() // 100).clamp(max=9)
            baseline = bucket_mean[bucket].clone()
            bucket_count[bucket] += 1
            bucket_mean[bucket] += (r - bucket_mean[bucket]) / bucket_count[bucket]
            r = r - baseline
        loss = dpg.critic_loss(critic(x0_hat, t), r)
        if args.explorations:
            xi = torch.randn((args.explorations, *x0_hat.shape[1:]), generator=generator)
            plus, minus, times, refs = x0_hat + args.sigma * xi, x0_hat - args.sigma * xi, t.expand(len(xi)), \
                x0.expand(len(xi), -1, -1, -1)
            with torch.no_grad():
                r_plus, r_minus = score(plus, refs), score(minus, refs)
            q_plus, q_minus = critic(plus, times), critic(minus, times)
            if args.loss == "difference":  # the directional derivative along each xi
                loss = loss + ((q_plus - q_minus) - (r_plus - r_minus)).square().mean() / (4 * args.sigma ** 2)
            else:
                loss = loss + dpg.critic_loss(q_plus, r_plus) + dpg.critic_loss(q_minus, r_minus)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cosines, ratios = [], []
    for x0, x0_hat, t in held_out:
        probe = x0_hat.clone().requires_grad_(True)
        (critic_gradient,) = torch.autograd.grad(critic(probe, t).sum(), probe)
        probe = x0_hat.clone().requires_grad_(True)
        (reward_gradient,) = torch.autograd.grad(score(probe, x0).sum(), probe)
        cosine, ratio = dpg.gradient_alignment(critic_gradient, reward_gradient)
        cosines.append(float(cosine))
        ratios.append(float(ratio))
    print(f"{args.loss} explorations={args.explorations} sigma={args.sigma} {args.critic} lr={args.lr}: "
          f"cos {np.nanmean(cosines):.3f}, ratio {np.nanmedian(ratios):.3f}")


if __name__ == "__main__":
    main()
