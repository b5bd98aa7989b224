#!/usr/bin/env python3
"""The demo ./setup.sh ends with: a real experiment through the whole service.

Starts a private local service on free ports — redis-server, glassbox-broker and one
`glassbox-engine serve` worker of SmolLM2 — connects with the Python client and, in one
request (a session of two traces), reads the logit lens of every layer on "The capital of
France is" and patches layer 8's " France" residual into "The capital of Italy is". Prints
both results and saves the logit lens as a plot. Then stops the service.

Usage: .venv/bin/python examples/demo.py [--plot build/demo_logit_lens.png]
"""

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "client"))

import numpy as np  # noqa: E402

import glassbox  # noqa: E402
from glassbox.launcher import LocalService, ServiceParams, free_port  # noqa: E402
from glassbox.service import ServiceBackend  # noqa: E402

LAYERS = 30  # SmolLM2-135M
SUBJECT = 3  # the position of " France" / " Italy"


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def experiment(model):
    """Logit lens on the clean prompt and the patched corrupt run, as one request."""
    paris, rome = model.tokenizer.encode(" Paris")[0], model.tokenizer.encode(" Rome")[0]
    with model.session():
        with model.trace("The capital of France is"):
            lens = [model.lm_head(model.model.norm(model.model.layers[n].output[0, -1])).save()
                    for n in range(LAYERS)]
            clean = model.model.layers[8].output
        with model.trace("The capital of Italy is"):
            corrupt = model.lm_head.output[0, -1].save()
        with model.trace("The capital of Italy is"):
            model.model.layers[8].output[:, SUBJECT] = clean[:, SUBJECT]
            patched = model.lm_head.output[0, -1].save()
    return paris, rome, [softmax(np.asarray(l)) for l in lens], np.asarray(corrupt), np.asarray(patched)


def report(model, paris, rome, lens, corrupt, patched):
    decode = model.tokenizer.decode
    print("logit lens on 'The capital of France is' (top token per layer):")
    print("  " + " | ".join(f"{n}:{decode([int(p.argmax())])!r}" for n, p in enumerate(lens)))
    for label, logits in (("Italy prompt", corrupt), ("Italy prompt, layer 8 ' France' patched in", patched)):
        p = softmax(logits)
        print(f"{label}: top {decode([int(logits.argmax())])!r}, "
              f"P(' Paris') = {p[paris]:.3f}, P(' Rome') = {p[rome]:.3f}")


def plot(lens, paris, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(LAYERS), [p[paris] for p in lens], marker="o")
    ax.set_xlabel("layer")
    ax.set_ylabel("P(' Paris')")
    ax.set_title("Logit lens: 'The capital of France is' (SmolLM2-135M, via Glassbox)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"plot saved to {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", default=str(ROOT / "build" / "demo_logit_lens.png"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="glassbox-demo-") as data:
        params = ServiceParams(port=free_port(), worker_port=free_port(), dev=True, data_dir=data)
        print(f"starting a private service (Redis, broker, SmolLM2 worker) at {params.url} ...")
        with LocalService(params) as service:
            backend = ServiceBackend(params.url, quiet=True)
            service.wait_until_serving(backend, "smollm2-135m")
            model = glassbox.Model("smollm2-135m", backend=backend)
            paris, rome, lens, corrupt, patched = experiment(model)
            report(model, paris, rome, lens, corrupt, patched)
            plot(lens, paris, pathlib.Path(args.plot))
    ok = patched.argmax() == paris and corrupt.argmax() != paris
    print("patching the subject's residual turned the Italy prompt's answer into ' Paris'"
          if ok else "unexpected: patching did not restore ' Paris'")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
