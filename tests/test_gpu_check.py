"""The GPU check (benchmarks/gpu_check.py) is prepared for the sessions that get a GPU: its
``--dry-run`` runs every step on the CPU with a tiny phantom, so a broken script is found here, not
in the few minutes of a lent GPU."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    steps = {k: v for k, v in result.items() if isinstance(v, dict) and "seconds" in v}
    assert [k for k, v in steps.items() if "error" in v] == []
    assert {"phantom_and_fingerprint", "gpu_plan_8gb", "plan_train_0.5gb", "predict_five_folds"} <= set(steps)
    assert result["gpu_plan_8gb"]["precision"] == "fp16" and result["gpu_plan_8gb"]["batch"] >= 2
    trained = result["plan_train_0.5gb"]
    assert trained["steps"] == 2 and trained["step_time_s_median"] > 0 and trained["memory_estimate_gb"] > 0
    assert result["predict_five_folds"]["folds"] == [0, 1, 2, 3, 4]
    assert result["environment"]["device"] == "cpu" and result["dry_run"] is True
