"""Every result carries a model card (README.md, recorded in the marker) whose loading code runs as written;
a README.md the user put in the output folder is never touched (the card is MODEL_CARD.md then), and
`train.overwrite` removes the card but not the user's README."""

import json
import logging
import re

import yaml

from helpers import run_cli, tiny_args
from rewardbooth.training.output_folder import clear_run, foreign_entries


def marker(out):
    return json.loads((out / ".rewardbooth-run").read_text())


def test_a_lora_result_has_a_hub_card_whose_code_loads_it_and_whose_samples_exist(tiny_folder, subject_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_args(subject_dir, out, f"model.pretrained={tiny_folder}", "method.name=lora",
                             "objective.name=dpg", "train.max_steps=2", "validation.every=1")) == 0
    card = (out / "README.md").read_text()
    assert "README.md" in marker(out)["result"]
    fields = yaml.safe_load(card.split("---\n")[1])
    assert fields["library_name"] == "diffusers" and "lora" in fields["tags"] and "base_model" not in fields
    links = re.findall(r"\]\((samples/[^)]+)\)", card)
    assert links == ["samples/step_000000.png", "samples/step_000001.png", "samples/step_000002.png"]
    assert all((out / link).is_file() for link in links)  # the final grid too, written after the card
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    code = code.replace("'path/to/this/folder'", repr(str(out))).replace(".images[0]", "")
    code = code.replace("pipeline('a photo of sks dog')", "pipeline('a photo of sks dog', num_inference_steps=1)")
    namespace = {}
    exec(code, namespace)  # the card's own calls, as a user pastes them
    adapters = [name for name, _ in namespace["pipeline"].unet.named_parameters() if "lora_B" in name]
    assert adapters and any(namespace["pipeline"].unet.get_parameter(n).abs().sum() > 0 for n in adapters)


def test_a_users_readme_is_left_alone_and_overwrite_removes_only_the_card(subject_dir, tmp_path, caplog):
    out = tmp_path / "run"
    quick = ["train.max_steps=1", "validation.every=0"]
    assert run_cli(tiny_args(subject_dir, out, *quick)) == 0
    assert (out / "README.md").is_file() and not (out / "MODEL_CARD.md").exists()
    assert "README.md" not in foreign_entries(out)  # the card is the run's: train.overwrite removes it
    # A run made before model cards, into which the user then put a README.md of their own:
    (out / "README.md").unlink()
    (out / ".rewardbooth-run").write_text(json.dumps({**marker(out), "result": ["model_index.json"]}))
    (out / "README.md").write_text("my notes on this run\n")
    with caplog.at_level(logging.INFO):
        assert run_cli(tiny_args(subject_dir, out, *quick, "train.overwrite=true")) == 0
    assert (out / "README.md").read_text() == "my notes on this run\n"
    assert "library_name: diffusers" in (out / "MODEL_CARD.md").read_text()
    assert "MODEL_CARD.md" in marker(out)["result"] and "README.md" not in marker(out)["result"]
    assert "holds a README.md a run did not write" in caplog.text
    clear_run(out)
    assert [p.name for p in out.iterdir()] == ["README.md"]
