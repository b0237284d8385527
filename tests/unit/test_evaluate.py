"""`rewardbooth evaluate` on tiny random DINO/CLIP models saved to disk and loaded through the real path."""

import csv
import json

import pytest
import torch

from helpers import run_cli, save_tiny_clip, save_tiny_vit


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    return save_tiny_vit(tmp_path_factory.mktemp("vit")), save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    for name, seed in (("method_a", 0), ("method_b", 7)):
        assert run_cli(["generate", "tiny", "--prompt", "a photo of sks dog", "--prompt", "a sks dog on the beach",
                        "--num-images", "2", "--num-inference-steps", "1", "--seed", str(seed), "--resolution", "64",
                        "--output", str(root / name)]) == 0
    return root


def test_evaluate_two_runs_end_to_end(generated, backbones, subject_dir, tmp_path, capsys):
    from rewardbooth.data.images import load_image, load_subject_images
    from rewardbooth.evaluation.metrics import embed
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
    for path in (generated / "method_a").glob("0*.png"):
        (bare / path.name).write_bytes(path.read_bytes())
    vit, clip = backbones
    base = ["evaluate", str(bare), "--subject", str(subject_dir), "--clip-model", str(clip), "--dino-model", str(vit)]
    assert run_cli([*base, "--output", str(tmp_path / "r1")]) == 2
    assert "no generation.json" in capsys.readouterr().err
    assert run_cli([*base, "--output", str(tmp_path / "r2"), "--metrics", "dino", "clip_i"]) == 0
    assert run_cli([*base, "--output", str(tmp_path / "r3"), "--metrics", "fid"]) == 2
    assert "unknown metric 'fid': choose from clip_i, clip_t, dino, face" in capsys.readouterr().err


def test_list_metrics_lists_the_registry(capsys):
    from rewardbooth.evaluation.metrics import metrics

    with pytest.raises(SystemExit) as done:
        run_cli(["evaluate", "--list-metrics"])  # like --help: no folders needed
    listing = capsys.readouterr().out
    assert done.value.code == 0 and all(f"{name}\n    backbone: " in listing for name in metrics.names())
    assert "dino\n    backbone: dino (--dino-model)" in listing and "needs the prompts" in listing


def test_a_registered_metric_is_scored_and_described_by_evaluate(generated, subject_dir, tmp_path):
    """A new metric is one registration: evaluate scores, summarises and records it with no other change."""
    from rewardbooth.data.images import load_image
    from rewardbooth.evaluation.metrics import metric, metrics

    @metric("mean_red", backbone=None, needs_prompts=True, protocol={"score": "mean red minus the photos' mean red"})
    def mean_red(run, _):
        def red(images):
            return torch.tensor([float(torch.tensor(list(image.getdata()))[:, 0].float().mean()) / 255
                                 for image in images], dtype=torch.float64)

        assert all(text.count("sks") == 0 for text in run.texts)  # identifiers removed
        return red(run.images) - red(run.references).mean()

    try:
        out = tmp_path / "report"
        assert run_cli(["evaluate", str(generated / "method_a"), "--subject", str(subject_dir), "--output", str(out),
                        "--metrics", "toy_fidelity", "mean_red"]) == 0
    finally:
        metrics._factories.pop("mean_red")
    report = json.loads((out / "evaluation.json").read_text())
    assert report["protocol"]["mean_red"] == {"score": "mean red minus the photos' mean red"}
    assert report["protocol"]["toy_fidelity"]["backbone"] == "toy judge"
    run = report["runs"]["method_a"]
    first = load_image(generated / "method_a" / run["images"][0]["file"])
    reference_red = [float(torch.tensor(list(load_image(path).getdata()))[:, 0].float().mean()) / 255
                     for path in sorted(subject_dir.glob("*.png"))]
    expected = float(torch.tensor(list(first.getdata()))[:, 0].float().mean()) / 255 - sum(reference_red) / 4
    assert run["images"][0]["mean_red"] == pytest.approx(expected)
    assert run["summary"]["mean_red"] == pytest.approx(sum(row["mean_red"] for row in run["images"]) / 4)
    assert "mean_red" in (out / "report.md").read_text()


def test_toy_judge_metrics(generated, subject_dir, tmp_path):
    out = tmp_path / "toy"
    assert run_cli(["evaluate", str(generated / "method_a"), "--subject", str(subject_dir), "--output", str(out),
                    "--metrics", "toy_fidelity", "toy_alignment"]) == 0
    summary = json.loads((out / "evaluation.json").read_text())["runs"]["method_a"]["summary"]
    assert -1 <= summary["toy_fidelity"] <= 1 and 0 <= summary["toy_alignment"] <= 1


def test_unreadable_reference_is_skipped_and_thumbnails_are_upright(generated, backbones, subject_dir, tmp_path):
    import shutil

    from PIL import Image

    photos = tmp_path / "photos"
    shutil.copytree(subject_dir, photos)
    (photos / "broken.png").write_bytes(b"\x89PNG not really")
    phone = Image.new("RGB", (40, 20), (0, 0, 255))
    phone.paste((255, 0, 0), (0, 0, 20, 20))  # stored left half red: upright, the top half
    exif = phone.getexif()
    exif[0x0112] = 6  # a phone photo: display turns it 90 degrees clockwise
    phone.save(photos / "a_phone.jpg", exif=exif, quality=95)
    vit, clip = backbones
    out = tmp_path / "report"
    assert run_cli(["evaluate", str(generated / "method_a"), "--subject", str(photos), "--output", str(out),
                    "--dino-model", str(vit), "--clip-model", str(clip), "--metrics", "dino"]) == 0
    assert json.loads((out / "evaluation.json").read_text())["reference_images"] == 5
    grid = Image.open(out / "references.png").convert("RGB")
    assert grid.size == (5 * 128, 128)
    top, bottom = grid.getpixel((64, 6)), grid.getpixel((64, 121))  # the phone photo's cell comes first
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60, (top, bottom)


@pytest.mark.parametrize("option", ["--dino-model", "--clip-model"])
def test_unloadable_backbone_names_the_option_to_change(option, generated, backbones, subject_dir, tmp_path, capsys):
    vit, clip = backbones
    models = {"--dino-model": str(vit), "--clip-model": str(clip), option: str(tmp_path / "nowhere")}
    out = tmp_path / "report"
    assert run_cli(["evaluate", str(generated / "method_a"), "--subject", str(subject_dir), "--output", str(out),
                    *(item for pair in models.items() for item in pair)]) == 2
    error = capsys.readouterr().err.strip()
    assert option in error and "nowhere" in error and "reward_options" not in error and "\n" not in error
    assert not out.exists()


def test_clip_t_removes_the_identifier_the_run_recorded(backbones, subject_dir, tmp_path):
    from rewardbooth.data.images import load_image
    from rewardbooth.evaluation.metrics import embed
    from rewardbooth.rewards.backbones import ClipFeatures

    vit, clip = backbones
    generated = tmp_path / "custom"
    assert run_cli(["generate", "tiny", "--prompt", "a photo of <new1> dog", "--identifier", "<new1>",
                    "--num-images", "1", "--num-inference-steps", "1", "--resolution", "64", "--output", str(generated)]) == 0
    assert json.loads((generated / "generation.json").read_text())["identifiers"] == ["<new1>"]
    out = tmp_path / "report"
    assert run_cli(["evaluate", str(generated), "--subject", str(subject_dir), "--output", str(out),
                    "--clip-model", str(clip), "--dino-model", str(vit), "--metrics", "clip_t"]) == 0
    run = json.loads((out / "evaluation.json").read_text())["runs"]["custom"]
    features = ClipFeatures(str(clip), torch.device("cpu"), with_text=True)
    image = load_image(generated / run["images"][0]["file"])
    expected = float(embed(features.images, [image], "x")[0] @ features.text("a photo of dog"))
    assert run["identifiers"] == ["<new1>"] and run["images"][0]["clip_t"] == pytest.approx(expected, abs=1e-5)


def test_generate_reads_the_identifiers_of_a_training_output(tmp_path):
    import yaml

    from rewardbooth.inference.generate import run_identifiers

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"identifier": "<new1>", "concepts": [
        {"identifier": "<new2>", "instance_dir": "cat"}]}}))
    assert run_identifiers(str(run)) == run_identifiers(str(run / "best")) == ["<new1>", "<new2>"]
    assert run_identifiers("tiny") == []


def test_bar_plot_draws_negative_means_below_zero(tmp_path):
    from PIL import Image

    from rewardbooth.evaluation.report import COLOURS, bar_plot

    path = bar_plot({"a": {"dino": -0.4}, "b": {"dino": 0.4}}, ("dino",), tmp_path / "bars.png")
    pixels = list(Image.open(path).convert("RGB").getdata())
    negative, positive = pixels.count(COLOURS[0]), pixels.count(COLOURS[1])
    assert negative > 40 * 50 and abs(negative - positive) < 0.1 * positive  # as long as the positive bar


def copy_run(generated, tmp_path, name="run"):
    import shutil

    folder = tmp_path / name
    shutil.copytree(generated / "method_a", folder)
    return folder


def test_evaluate_reads_only_files_under_the_folder(generated, backbones, subject_dir, tmp_path, caplog):
    import shutil

    run = copy_run(generated, tmp_path)
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(run / "grid.png", secret / "secret.png")
    (run / "linked.png").symlink_to(secret / "secret.png")
    (run / "grid.png").unlink()
    (run / "grid.png").symlink_to(secret / "secret.png")
    record = json.loads((run / "generation.json").read_text())
    prompt = record["images"][0]["prompt"]
    record["images"] += [{"file": "linked.png", "prompt": prompt, "seed": 0},
                         {"file": "../secret/secret.png", "prompt": prompt, "seed": 0},
                         {"file": str(secret / "secret.png"), "prompt": prompt, "seed": 0}]
    (run / "generation.json").write_text(json.dumps(record))
    vit, clip = backbones
    out = tmp_path / "report"
    assert run_cli(["evaluate", str(run), "--subject", str(subject_dir), "--output", str(out), "--dino-model",
                    str(vit), "--clip-model", str(clip), "--metrics", "dino"]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert len(report["runs"]["run"]["images"]) == 4
    assert "secret" not in (out / "evaluation.json").read_text() + (out / "images.csv").read_text()
    assert not (out / "grid_run.png").exists()
    for name in ("linked.png", "../secret/secret.png", str(secret / "secret.png")):
        assert name in caplog.text


def test_a_corrupt_generated_image_is_skipped_with_a_warning(generated, backbones, subject_dir, tmp_path, caplog):
    run = copy_run(generated, tmp_path)
    broken = json.loads((run / "generation.json").read_text())["images"][0]["file"]
    (run / broken).write_bytes(b"\x89PNG not really")
    vit, clip = backbones
    out = tmp_path / "report"
    assert run_cli(["evaluate", str(run), "--subject", str(subject_dir), "--output", str(out), "--dino-model",
                    str(vit), "--clip-model", str(clip), "--metrics", "dino", "clip_t"]) == 0
    rows = json.loads((out / "evaluation.json").read_text())["runs"]["run"]["images"]
    assert len(rows) == 3 and broken not in [row["file"] for row in rows]
    assert broken in caplog.text and "cannot decode" in caplog.text
