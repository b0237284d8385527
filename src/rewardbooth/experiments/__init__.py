"""Studies built on the library: `bench` (step cost and memory), `bench_evaluation` (evaluation speed), `sweep`
(DreamBench sweeps), `demo` (the README's one-command demo) and `toyworld/` (experiments in the toy world:
pretraining its base model, the benchmark of objectives, the critic study, the judge's evaluation).

The top layer under the CLI: nothing below imports it.
"""
