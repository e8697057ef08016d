import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


@pytest.mark.slow
def test_bench_overhead_runs_interleaved(shared_data, tmp_path):
    import bench_overhead

    row = bench_overhead.main(["--data-dir", str(shared_data), "--images", "256", "--epochs",
                               "3", "--batch-size", "64", "--variants", "plain,callback",
                               "--results-dir", str(tmp_path)])
    plain, callback = row["variants"]["plain"], row["variants"]["callback"]
    for kind in ("seconds", "cpu_seconds"):
        assert len(plain[kind]["epochs"]) == len(callback[kind]["epochs"]) == 2
        assert plain[kind]["ratio"] == 1.0 and callback[kind]["ratio"] > 0
    assert callback["achieved"]["flops_kept"] <= 0.5
    assert (tmp_path / "overhead.json").is_file()
