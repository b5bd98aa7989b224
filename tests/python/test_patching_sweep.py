"""examples/patching_sweep.py on a tiny configuration (one prompt pair, two layers) against
the live SmolLM2 service: it writes one result line per (pair, layer) and the heatmap, and a
second run finds everything done and sends no job."""

import json
import os
import signal
import subprocess
import sys

from conftest import ROOT

SCRIPT = ROOT / "examples" / "patching_sweep.py"
PAIR = {"clean": "The capital of France is", "corrupt": "The capital of Italy is",
        "answer": " Paris", "wrong": " Rome"}
SUBJECT = 3  # " Italy"


def sweep(service, tmp_path) -> str:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([PAIR]))
    argv = [sys.executable, str(SCRIPT), "--url", service.url, "--out",
            str(tmp_path / "sweep.jsonl"), "--layers-step", "15", "--pairs", str(pairs)]
    env = {**os.environ, "GLASSBOX_API_KEY": service.api_key, "PYTHONPATH": str(ROOT / "client")}
    env.pop("GLASSBOX_URL", None)  # the service is named by --url
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_sweep_writes_results_and_heatmap_and_resumes(smollm2_service, tmp_path):
    first = sweep(smollm2_service, tmp_path)
    assert "0 jobs already in" in first and "2 to run" in first
    lines = (tmp_path / "sweep.jsonl").read_text().splitlines()
    records = sorted(map(json.loads, lines), key=lambda r: r["layer"])
    assert [r["layer"] for r in records] == [0, 15]
    for record in records:
        assert len(record["patched_diff"]) == 5
        assert record["clean_diff"] > 0 > record["corrupt_diff"]
        assert record["patched_diff"][SUBJECT] > 0      # the clean subject brings Paris back
        assert record["patched_diff"][SUBJECT - 1] < 0  # before the subject: nothing changes
    assert (tmp_path / "sweep.png").stat().st_size > 0

    second = sweep(smollm2_service, tmp_path)
    assert "2 jobs already in" in second and "0 to run" in second
    assert (tmp_path / "sweep.jsonl").read_text().splitlines() == lines


def test_ctrl_c_says_rerun_to_resume(smollm2_service, tmp_path):
    """SIGINT once the sweep has said what it will run (every layer: jobs are in flight):
    no traceback, a line saying to rerun, exit status 130."""
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([PAIR]))
    argv = [sys.executable, "-u", str(SCRIPT), "--url", smollm2_service.url, "--out",
            str(tmp_path / "sweep.jsonl"), "--layers-step", "1", "--pairs", str(pairs)]
    env = {**os.environ, "GLASSBOX_API_KEY": smollm2_service.api_key,
           "PYTHONPATH": str(ROOT / "client")}
    env.pop("GLASSBOX_URL", None)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        for line in process.stdout:
            if "to run" in line:
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert process.returncode == 130
