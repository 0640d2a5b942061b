"""scripts/benchmark.py runs both ways of computing on the tiny architecture and reports every figure."""

import json
import subprocess
import sys

from tests.train_fixtures import REPO


def test_benchmark_measures_ours_and_the_reference_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "scripts/benchmark.py", "--config", "configs/loveda.yaml", "--what", "both",
                           "--both", "--tiny", "--iters", "1", "--warmup", "0", "--eval-size", "112",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    train, evaluation = report["train"], report["eval"]
    assert train["ours"]["reference"] is False and train["reference"]["reference"] is True
    assert set(train["ours"]["ms_breakdown"]) == {"ema_pseudo_labels", "teachers", "optimizer_and_ema",
                                                  "student_forward_backward"}
    assert train["ratios"]["train_speedup"] > 0
    for mode in ("original", "sliding_window"):
        assert evaluation["ours"][mode]["images_per_s"] > 0
        assert evaluation["ratios"][f"eval_{mode}_speedup"] > 0
    assert "train ours:" in done.stdout and "eval reference:" in done.stdout
