"""The hacking check scores each validation grid of a toy run with both judges, after the run."""

import math

import numpy as np
import pytest
import yaml
from PIL import Image

from rewardbooth.evaluation.plots import make_grid
from rewardbooth.experiments.toyworld.experiment import load_judges
from rewardbooth.experiments.toyworld.hacking import GAP, fidelity_trace, gap_lines, gap_table, grid_tiles
from rewardbooth.toyworld import subjects


def test_grid_tiles_undo_make_grid():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]
    tiles = grid_tiles(make_grid(images, columns=3), rows=2, columns=3)
    assert [np.asarray(t).tolist() for t in tiles] == [np.asarray(i).tolist() for i in images]


@pytest.fixture(scope="module")
def judges():
    return load_judges()


def toy_run(folder, grids):
    """A run folder as the benchmark leaves it: photos, config.yaml, one sample grid per step."""
    subject = subjects.make_subject(1)
    photos = [p for p in subjects.write_subject(subject, folder / "subject") if p.suffix == ".png"]
    prompts = [subjects.instance_prompt(subject), subjects.prompt_set(subject)[0]]
    (folder / "model" / "samples").mkdir(parents=True)
    (folder / "model" / "config.yaml").write_text(yaml.safe_dump({"validation": {"prompts": prompts, "num_images": 2}}))
    for step, images in grids.items():
        make_grid(images(photos), columns=2).save(folder / "model" / "samples" / f"step_{step:06d}.png")


def test_the_trace_scores_each_step_with_both_judges(tmp_path, judges):
    noise = np.random.default_rng(1)

    def random_images(photos):
        return [Image.fromarray(noise.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(4)]

    def the_photos(photos):
        return [Image.open(p).convert("RGB") for p in photos[:4]]

    toy_run(tmp_path, {0: random_images, 600: the_photos})
    trace = fidelity_trace(tmp_path, judges)
    assert list(trace) == ["0", "600"]
    for step in trace.values():
        assert step[GAP] == pytest.approx(step["judge"] - step["heldout"])
    assert trace["600"]["heldout"] > trace["0"]["heldout"] + 0.3  # the subject's own photos score as the subject


def test_the_gap_table_reports_the_widening_of_each_objective():
    traces = {"baseline": [{"0": {GAP: -0.2}, "600": {GAP: 0.1}}, {"0": {GAP: -0.2}, "600": {GAP: 0.2}}],
              "hacked": [{"0": {GAP: -0.2}, "600": {GAP: 0.5}}], "base-model": []}
    table = gap_table(traces)
    assert table == {"baseline": {"0": -0.2, "600": pytest.approx(0.15)}, "hacked": {"0": -0.2, "600": 0.5}}
    lines = gap_lines(table)
    assert lines[-1] == "| hacked | -0.200 | +0.500 | +0.700 |"
    assert math.isclose(float(lines[-2].split("|")[-2]), 0.35)
    longer = gap_lines({"short": {"0": 0.0, "600": 0.1}, "long": {"0": 0.0, "600": 0.1, "1600": 0.4}})
    assert longer[-2].endswith("| +0.100 |") and longer[-1].endswith("| +0.400 |")
