"""pytest imports test files by basename (no packages under tests/): two files of one name in different
folders stop the whole suite at collection. Fails here, with both paths, instead."""

from collections import defaultdict
from pathlib import Path


def test_every_test_file_name_is_unique():
    tests = Path(__file__).resolve().parents[1]
    by_name = defaultdict(list)
    for path in tests.rglob("test_*.py"):
        by_name[path.name].append(str(path.relative_to(tests)))
    assert not {name: paths for name, paths in by_name.items() if len(paths) > 1}
