"""Break one line of the training loop, run the tests that guard it, put the line back.

    python tools/mutants.py                 # every mutant against tests/unit/test_wiring.py
    python tools/mutants.py detach-policy   # one mutant
    python tools/mutants.py --tests tests/unit/test_wiring.py tests/integration/test_resume.py

Each mutant is a line the issue tracker found broken-but-unnoticed once (or could be): a test of wiring is
only evidence if it fails when the wiring is cut. Prints KILLED or SURVIVED per mutant; exits 1 if any
survived. The file is always restored, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRAIN, DATA = "src/rewardbooth/training/loop.py", "src/rewardbooth/training/batches.py"
DDPM, SD = "src/rewardbooth/models/ddpm.py", "src/rewardbooth/models/stable_diffusion.py"
MATHS, GENERATE = "src/rewardbooth/maths/dpg.py", "src/rewardbooth/inference/generate.py"

MUTANTS = {  # name: (file, original text, mutated text)
    "detach-policy": (TRAIN, "terms = dpg.actor_loss(mse[:n], prior_mse, q_policy, timesteps, **weights)",
                      "terms = dpg.actor_loss(mse[:n], prior_mse, q_policy.detach(), timesteps, **weights)"),
    "abar-t-minus-1": (DDPM, "return self.alphas_cumprod[timesteps]",
                       "return self.alphas_cumprod[(timesteps - 1).clamp(min=0)]"),
    "direct-detached": (TRAIN, "output = as_output(reward_fn(x0_hat.float(), context))",
                        "output = as_output(reward_fn(x0_hat.detach().float(), context))"),
    "prior-leak": (TRAIN, "return Losses(dpg.actor_loss(mse[:n], prior_mse, None, batch.timesteps[:n], **weights))",
                   "return Losses(dpg.actor_loss(mse, prior_mse, None, batch.timesteps[:n], **weights))"),
    "decode-no-grad": (DATA, "def decode_latents(vae: AutoencoderKL",
                       "@torch.no_grad()\ndef decode_latents(vae: AutoencoderKL"),
    "no-accumulation-divide": (TRAIN, 'accelerator.backward(losses.terms["loss"] / accumulation)',
                               'accelerator.backward(losses.terms["loss"])'),
    "critic-fit-moves-policy": (TRAIN, "q_taken = policy.critic(features.detach(), timesteps, critic_text)",
                                "q_taken = policy.critic(features, timesteps, critic_text)"),
    # The flow families' seams (run with --tests tests/unit/test_dpg.py tests/contract/test_family_contract.py,
    # or tests/integration/test_flow_families.py for the sampling defaults).
    "flow-look-forward-unscaled": (MATHS, "return x_sigma - expand_to(sigma, x_sigma) * velocity",
                                   "return x_sigma - velocity"),
    "sd-matches-by-prefix": (SD, "return pipeline_class_name in self.pipeline_class_names",
                             'return pipeline_class_name.startswith("StableDiffusion") and "XL" not in pipeline_class_name'),
    "global-guidance-for-every-family": (GENERATE, "guidance_scale = guidance if guidance_scale is None else guidance_scale",
                                         "guidance_scale = 7.5 if guidance_scale is None else guidance_scale"),
    "critic-not-frozen": (TRAIN, "with frozen(policy.critic_module) as critic:\n        q_policy",
                          "with contextlib.nullcontext(policy.critic_module) as critic:\n        q_policy"),
}


def run(name: str, tests: list[str]) -> bool:
    """True if the tests fail with the mutant in place (the mutant is killed)."""
    relative, original_text, mutated_text = MUTANTS[name]
    path = ROOT / relative
    original = path.read_text()
    if original.count(original_text) != 1:
        raise SystemExit(f"mutant {name!r}: its line is not (exactly once) in {relative}; update tools/mutants.py")
    try:
        path.write_text(original.replace(original_text, mutated_text))
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(original)
    last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"{name:<26} {'KILLED' if result.returncode else 'SURVIVED'}   {last}", flush=True)
    return result.returncode != 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help=f"mutants to run (default: all): {', '.join(MUTANTS)}")
    parser.add_argument("--tests", nargs="+", default=["tests/unit/test_wiring.py"])
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(MUTANTS))
    if unknown:
        parser.error(f"unknown mutant {unknown[0]!r}; known: {', '.join(MUTANTS)}")
    killed = [run(name, args.tests) for name in args.names or MUTANTS]
    return 0 if all(killed) else 1


if __name__ == "__main__":
    sys.exit(main())
