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
FAMILIES = "src/rewardbooth/models/families.py"
UNTRUSTED = "tests/integration/test_untrusted_input.py"

MUTANTS = {  # name: (file, original text, mutated text)
    "detach-policy": (TRAIN, "terms = dpg.actor_loss(mse[:n], prior_mse, q_policy, timesteps, **weights)",
                      "terms = dpg.actor_loss(mse[:n], prior_mse, q_policy.detach(), timesteps, **weights)"),
    "abar-t-minus-1": (FAMILIES, "return self.alphas_cumprod[timesteps]",
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
    "critic-not-frozen": (TRAIN, "with frozen(policy.critic_module) as critic:\n        q_policy",
                          "with contextlib.nullcontext(policy.critic_module) as critic:\n        q_policy"),
    # Guards against bad input (issue 18), each with the tests that kill it (a 4th entry: run by default).
    "skip-limit-ignored": (TRAIN, "if skips.over_limit:", "if False:", [UNTRUSTED + "::test_steps_skipped_in_a_row"
                                                                        "_stop_the_run_naming_the_critic"]),
    "non-finite-published": (TRAIN, "broken = non_finite_weights(", "broken = None and (",
                             [UNTRUSTED + "::test_non_finite_weights_are_never_published"]),
    "cwd-importable": ("src/rewardbooth/__main__.py", "    del sys.path[0]", "    pass",
                       [UNTRUSTED + "::test_the_working_folder_is_not_importable_under_python_m"]),
    "saved-run-names-trusted": ("src/rewardbooth/inference/generate.py", "names_from_saved_run(saved, trust_remote_code)",
                                "names_from_saved_run(saved, True)",
                                [UNTRUSTED + "::test_generate_never_imports_code_named_by_a_saved_run"]),
    "evaluate-reads-outside": ("src/rewardbooth/data/images.py", "path != root and path.is_relative_to(root)",
                               "path != root", ["tests/unit/test_evaluate.py::test_evaluate_reads_only_files_under_"
                                                "the_folder"]),
}


def run(name: str, tests: list[str]) -> bool:
    """True if the tests fail with the mutant in place (the mutant is killed)."""
    relative, original_text, mutated_text = MUTANTS[name][:3]
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
    parser.add_argument("--tests", nargs="+", default=None,
                        help="default: a mutant's own tests, else tests/unit/test_wiring.py")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(MUTANTS))
    if unknown:
        parser.error(f"unknown mutant {unknown[0]!r}; known: {', '.join(MUTANTS)}")
    default = ["tests/unit/test_wiring.py"]
    killed = [run(name, args.tests or (MUTANTS[name][3] if len(MUTANTS[name]) > 3 else default))
              for name in args.names or MUTANTS]
    return 0 if all(killed) else 1


if __name__ == "__main__":
    sys.exit(main())
