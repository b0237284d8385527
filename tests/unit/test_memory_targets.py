"""The memory-target verdicts benchmarks/gpu-check.sh prints for bench reports (experiments/memory_targets.py)."""

import json

from rewardbooth.experiments.memory_targets import main, verdicts


def report(dpg_reserved_mib, ratio):
    return {"variants": {"baseline": {"peak_memory_mib": 30000.0, "peak_reserved_mib": 31000.0},
                         "dpg-look-forward": {"peak_memory_mib": 20000.0, "peak_reserved_mib": dpg_reserved_mib}},
            "ratios": {"dpg-look-forward": {"memory": ratio}}}


def test_the_reserved_peak_of_dpg_is_held_to_the_target_and_the_ratio_to_1_03():
    lines = verdicts(report(24 * 1024.0, 1.03), peak_gib=24)
    assert lines == [("dpg-look-forward: peak 24.00 GiB (target <= 24 GiB)", True),
                     ("dpg-look-forward / baseline memory 1.030 (target <= 1.03)", True)]
    assert [met for _, met in verdicts(report(24 * 1024.0 + 1, 1.031), peak_gib=24)] == [False, False]
    assert len(verdicts(report(1e9, 1.0), peak_gib=None)) == 1  # no peak target: the ratio only


def test_a_cpu_report_falls_back_to_the_allocated_peak_and_report_only_never_fails(tmp_path, capsys):
    cpu = report(None, 1.5)
    path = tmp_path / "report.json"
    path.write_text(json.dumps(cpu))
    assert main([str(path), "--peak-gib", "16"]) == 1
    assert "MISSED: dpg-look-forward: peak 19.53 GiB (target <= 16 GiB)" in capsys.readouterr().out
    assert main([str(path), "--peak-gib", "16", "--report-only"]) == 0
