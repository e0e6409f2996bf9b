"""The README's quick-start, run as a new user would: `make demo` into a fresh virtual environment.

The demo recipe runs with smaller budgets (fewer masks, samples and examples) through
DEMO_ARGS, which the Makefile appends to `compressor run`. The code path is the same.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SMALL_BUDGETS = [
    "--set data.calibration.n_samples=4",
    "--set data.evaluation.n_samples=2",
    "--set stages.1.config.limit=20",
    "--set stages.3.config.budget_evaluations=48",
    "--set stages.3.config.allow_low_quality=true",
    "--set stages.5.config.n_samples=8",
    "--set stages.5.config.seq_len=128",
    "--set stages.7.config.limit=20",
]


def quickstart_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def test_readme_quickstart_is_make_demo_and_make_test():
    assert quickstart_commands() == ["make demo", "make test"]


@pytest.mark.integration
def test_make_demo_in_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    out = tmp_path / "out"
    args = " ".join(SMALL_BUDGETS + [f"--output {out}", f"--db sqlite:///{tmp_path / 'demo.db'}"])
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("COMPRESSOR_DB", None)

    result = subprocess.run(
        ["make", "demo", f"VENV={venv}", f"DEMO_ARGS={args}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )

    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (venv / "bin" / "compressor").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["num_layers"] == {"before": 30, "after": 24}
    metrics = {pair["metric"] for pair in report["before_after"]}
    assert "ppl_token" in metrics
    assert "size_disk_mb" in metrics
    assert (out / "report.md").exists()
    assert (out / "model" / "config.json").exists()
    assert "before → after" in result.stdout
