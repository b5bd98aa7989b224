"""One service, two model families: `glassbox up` (a subprocess, as a lab runs it) serving
SmolLM2 (Llama) and the tiny random GPT-2 at once, two workers under two names, and the same
experiment — written only against TransformerLens names, `model.unembed` and
`model.ln_final` — run unchanged on both: the logit lens at every layer and a head ablation.

Skipped, saying why, without redis-server, the binaries ($GLASSBOX_BIN_DIR, default
build/bin) or the SmolLM2 model.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import glassbox
from glassbox import launcher

from conftest import ROOT, SMOLLM2, bin_dir
from test_service import glassbox_cli, missing_binaries

TINY_GPT2 = ROOT / "tests" / "fixtures" / "tiny_gpt2"
SERVED = {"smollm2-135m": ("llama", SMOLLM2), "tiny-gpt2": ("gpt2", TINY_GPT2)}
PROMPT = [10, 20, 30, 40, 50]  # token ids: the tiny GPT-2 has no tokenizer (and 128 tokens)


def lens_and_head_ablation(model, prompt):
    """The logit lens of every layer at the last position, the logits, and layer 1's z
    clean and with head 1 zeroed, with the logits that follow: one session, two traces."""
    with model.session(quiet=True):
        with model.trace(prompt):
            lens = [model.unembed(model.ln_final(block.hook_resid_post))[0, -1].save()
                    for block in model.blocks]
            logits = model.unembed.hook_logits[0, -1].save()
            clean_z = model.blocks[1].attn.hook_z.save()
        with model.trace(prompt):
            model.blocks[1].attn.hook_z[:, :, 1] = 0
            z = model.blocks[1].attn.hook_z.save()
            ablated = model.unembed.hook_logits[0, -1].save()
    return ([v.value for v in lens], logits.value, clean_z.value, z.value, ablated.value)


@pytest.fixture(scope="module")
def data_dir():
    """A directory of this module's own (see test_service.data_dir)."""
    with tempfile.TemporaryDirectory(prefix="glassbox-families-") as path:
        yield path


@pytest.fixture(scope="module")
def two_families(data_dir):
    """`glassbox up --dev` with two --model/--name pairs on free ports; yields its URL."""
    if missing_binaries() or not SMOLLM2.is_file():
        pytest.skip(f"needs {missing_binaries() or SMOLLM2} (build, or ./setup.sh)")
    port = launcher.free_port()
    argv = [sys.executable, "-u", "-m", "glassbox.cli", "up", "--dev", "--port", str(port),
            "--worker-port", str(launcher.free_port()), "--data", data_dir]
    for name, (_, path) in SERVED.items():
        argv += ["--model", str(path), "--name", name]
    process = subprocess.Popen(argv, cwd=ROOT / "client", stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "GLASSBOX_BIN_DIR": str(bin_dir())})
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    printed = "".join(lines)
    assert f"serving smollm2-135m, tiny-gpt2 at tcp://127.0.0.1:{port}" in printed, printed
    yield f"tcp://127.0.0.1:{port}"
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0


@pytest.mark.parametrize("name", SERVED)
def test_the_same_transformerlens_experiment_runs_on_every_family(two_families, name):
    model = glassbox.Model(name, url=two_families, arrays="numpy", quiet=True)
    try:
        assert model.config["architecture"] == SERVED[name][0]
        lens, logits, clean_z, z, ablated = lens_and_head_ablation(model, PROMPT)
    finally:
        model._backend.close()
    assert len(lens) == model.config["num_layers"]
    assert all(v.shape == (model.config["vocab_size"],) for v in lens)
    # The lens at the last layer is the model's own unembedding of its last residual.
    assert np.abs(lens[-1] - logits).max() <= 1e-4 * np.abs(logits).max()
    assert np.all(z[:, :, 1] == 0) and np.any(clean_z[:, :, 1] != 0)
    assert np.array_equal(np.delete(z, 1, axis=2), np.delete(clean_z, 1, axis=2))
    assert not np.allclose(ablated, logits)


def test_status_lists_both_models(two_families):
    status = glassbox_cli("status", "--url", two_families)
    assert status.returncode == 0, status.stderr
    assert f"broker at {two_families}: up; 2 model(s), 2 worker(s)" in status.stdout
    assert re.search(r"smollm2-135m\s+1 worker", status.stdout)
    assert re.search(r"tiny-gpt2\s+1 worker", status.stdout)


@pytest.mark.parametrize("args, error", [
    (["--model", "a", "--model", "b", "--name", "x"],
     r"give one --name per --model \(2 model\(s\), 1 name\(s\)\)"),
    (["--model", str(TINY_GPT2), "--name", "x", "--model", str(TINY_GPT2), "--name", "x"],
     "each model needs a name of its own"),
])
def test_up_refuses_models_without_names_of_their_own(args, error):
    if missing_binaries():
        pytest.skip(f"needs {missing_binaries()}")
    done = glassbox_cli("up", "--dev", "--port", str(launcher.free_port()), *args,
                        env={**os.environ, "GLASSBOX_BIN_DIR": str(bin_dir())})
    assert done.returncode == 1 and re.search(error, done.stderr), done.stderr
