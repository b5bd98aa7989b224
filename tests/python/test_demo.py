"""The demo that ./setup.sh ends with (examples/demo.py): a real experiment through a
private local service — Redis, broker and a SmolLM2 worker — printing its result and saving
its plot."""

import subprocess
import sys

import pytest

from conftest import ROOT, SMOLLM2


def test_the_setup_demo_runs_an_experiment_through_the_service(tmp_path):
    if not SMOLLM2.is_file():
        pytest.skip(f"the default model is missing ({SMOLLM2}); run ./setup.sh")
    plot = tmp_path / "lens.png"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "demo.py"), "--plot", str(plot)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "layer 8 ' France' patched in: top ' Paris'" in done.stdout
    assert "29:' Paris'" in done.stdout  # the logit lens ends on the model's own answer
    assert plot.stat().st_size > 10_000
