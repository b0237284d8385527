"""`rewardbooth evaluate` on tiny random DINO/CLIP models saved to disk and loaded through the real path."""

import csv
import json

import pytest
import torch

from helpers import run_cli, save_tiny_clip, save_tiny_vit
from rewardbooth.evaluate import mean_cosine_to_references, paired_cosine


def test_metric_maths_by_hand():
    features = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    references = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    torch.testing.assert_close(mean_cosine_to_references(features, references), torch.tensor([0.5, 0.7]))
    torch.testing.assert_close(paired_cosine(features, references), torch.tensor([1.0, 0.8]))


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("vit")), save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    for name, seed in (("method_a", 0), ("method_b", 7)):
        assert run_cli(["generate", "tiny", "--prompt", "a photo of sks dog", "--prompt", "a sks dog on the beach",
                        "--num-images", "2", "--steps", "1", "--seed", str(seed), "--resolution", "64",
                        "--output", str(root / name)]) == 0
    return root


def test_evaluate_two_runs_end_to_end(generated, backbones, subject_dir, tmp_path, capsys):
    from rewardbooth.data import load_image, load_subject_images
    from rewardbooth.evaluate import embed
    from rewardbooth.rewards.backbones import ClipFeatures, DinoFeatures

    vit, clip = backbones
    out = tmp_path / "report"
    argv = ["evaluate", str(generated / "method_a"), str(generated / "method_b"), "--subject", str(subject_dir),
            "--output", str(out), "--dino-model", str(vit), "--clip-model", str(clip)]
    assert run_cli(argv) == 0
    assert "| method_a | 4 |" in capsys.readouterr().out
    report = json.loads((out / "evaluation.json").read_text())
    assert set(report["runs"]) == {"method_a", "method_b"} and set(report["protocol"]) == {"dino", "clip_i", "clip_t"}
    run = report["runs"]["method_a"]
    assert run["generation"]["seeds"] == [0, 1] and len(run["prompts"]) == 2
    # DINO and CLIP-T by hand from the same backbones.
    references = [image for _, image in load_subject_images(subject_dir)]
    images = [load_image(generated / "method_a" / row["file"]) for row in run["images"]]
    dino = DinoFeatures(str(vit), torch.device("cpu"))
    expected = (embed(dino, images, "x") @ embed(dino, references, "x").T).mean(dim=1)
    torch.testing.assert_close(torch.tensor([row["dino"] for row in run["images"]]), expected)
    clip_features = ClipFeatures(str(clip), torch.device("cpu"), with_text=True)
    text = clip_features.text("a dog on the beach")  # identifier removed
    beach = [i for i, row in enumerate(run["images"]) if row["prompt"] == "a sks dog on the beach"]
    expected_t = embed(clip_features.images, [images[i] for i in beach], "x") @ text
    torch.testing.assert_close(torch.tensor([run["images"][i]["clip_t"] for i in beach]), expected_t)
    assert run["summary"]["dino"] == pytest.approx(float(expected.mean()))
    # Files a person and a spreadsheet read.
    with (out / "images.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 8 and {"run", "file", "prompt", "seed", "dino", "clip_i", "clip_t"} <= rows[0].keys()
    page = (out / "report.html").read_text()
    for figure in ("means.png", "box_dino.png", "references.png", "grid_method_a.png"):
        assert figure in page and (out / figure).is_file()
    assert run_cli(argv) == 2 and "--overwrite" in capsys.readouterr().err


def test_clip_t_needs_the_prompts(generated, backbones, subject_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in (generated / "method_a").glob("a-*.png"):
        (bare / path.name).write_bytes(path.read_bytes())
    vit, clip = backbones
    base = ["evaluate", str(bare), "--subject", str(subject_dir), "--clip-model", str(clip), "--dino-model", str(vit)]
    assert run_cli([*base, "--output", str(tmp_path / "r1")]) == 2
    assert "no generation.json" in capsys.readouterr().err
    assert run_cli([*base, "--output", str(tmp_path / "r2"), "--metrics", "dino", "clip_i"]) == 0
    assert run_cli([*base, "--output", str(tmp_path / "r3"), "--metrics", "fid"]) == 2
    assert "unknown metric 'fid'" in capsys.readouterr().err


def test_toy_judge_metrics(generated, subject_dir, tmp_path):
    out = tmp_path / "toy"
    assert run_cli(["evaluate", str(generated / "method_a"), "--subject", str(subject_dir), "--output", str(out),
                    "--metrics", "toy_fidelity", "toy_alignment"]) == 0
    summary = json.loads((out / "evaluation.json").read_text())["runs"]["method_a"]["summary"]
    assert -1 <= summary["toy_fidelity"] <= 1 and 0 <= summary["toy_alignment"] <= 1
