"""Progress off a terminal (pytest's captured stderr is not one): a few lines, not hundreds of bar updates."""

from rewardbooth.core.progress import LOG_LINES, progress


def test_a_long_job_logs_one_line_per_tenth_and_the_end(capsys):
    bar = progress(total=1000, desc="train")
    for step in range(1000):
        bar.set_postfix({"loss": f"{1 / (step + 1):.3g}"})
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == LOG_LINES
    assert lines[0].startswith("train: 100/1000 (") and lines[-1].startswith("train: 1000/1000 (")
    assert lines[-1].endswith("loss=0.001)")


def test_iterating_logs_the_end_once_and_a_resumed_job_counts_from_where_it_was(capsys):
    assert list(progress(range(3), desc="generate")) == [0, 1, 2]
    assert capsys.readouterr().err.splitlines() == ["generate: 1/3 (0 s)", "generate: 2/3 (0 s)", "generate: 3/3 (0 s)"]
    bar = progress(total=100, initial=95, desc="train")
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err.splitlines() == ["train: 100/100 (0 s)"]


def test_disabled_progress_says_nothing(capsys):
    list(progress(range(50), desc="class images", disable=True))
    assert capsys.readouterr().err == ""
