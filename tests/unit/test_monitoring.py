"""metrics.jsonl stays strict JSON (no NaN / Infinity) and its readers take the nulls."""

import json
import math

from rewardbooth.training.monitoring import MetricsLog, plot_metrics


def strict(line: str) -> dict:
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_non_finite_values_are_written_as_null_and_plotted_around(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", enabled=True)
    log.write(1, {"loss": 1.0, "critic_loss": 2.0})
    log.write(2, {"loss": math.nan, "critic_loss": math.inf})
    log.write(3, {"loss": 0.5, "critic_loss": -math.inf})
    rows = [strict(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1] == {"step": 2, "loss": None, "critic_loss": None} and rows[2]["critic_loss"] is None
    log.truncate_after(2)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert plot_metrics(tmp_path / "metrics.jsonl", tmp_path / "metrics.png") == tmp_path / "metrics.png"
