#!/usr/bin/env python3
"""Activation patching swept over layers x positions for a set of prompt pairs: a batch
experiment on a Glassbox service.

For each pair (a clean prompt, a corrupt prompt of the same length in tokens, the clean
answer and the corrupt answer) and each layer, one job runs the clean prompt and then, in
one batched forward pass, the corrupt prompt unpatched and once per position with the clean
residual stream (that layer's output) patched in at that position. Its metric is
logit(answer) - logit(wrong answer) at the last position.

Jobs run through ``glassbox.run_all`` (bounded concurrency, one progress line). Each
finished job is appended to a JSON-lines file at once, so an interrupted sweep picks up
where it stopped: a rerun skips every (pair, layer) already in the file. At the end a
heatmap of the share of the clean-vs-corrupt gap each patch restores is written next to it.

    glassbox up                                   # in another terminal; export what it prints
    python examples/patching_sweep.py --out sweep.jsonl --layers-step 3
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Dict, List

import numpy as np

import glassbox


@dataclass(frozen=True)
class Pair:
    clean: str
    corrupt: str
    answer: str  # the clean prompt's answer, e.g. " Paris"
    wrong: str  # the corrupt prompt's answer, e.g. " Rome"


DEFAULT_PAIRS = [
    Pair("The capital of France is", "The capital of Italy is", " Paris", " Rome"),
    Pair("The capital of Germany is", "The capital of Spain is", " Berlin", " Madrid"),
    Pair("The Eiffel Tower is in the city of", "The Colosseum is in the city of",
         " Paris", " Rome"),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the service (default: $GLASSBOX_URL, else "
                        "tcp://127.0.0.1:5555); the key comes from $GLASSBOX_API_KEY")
    parser.add_argument("--model", default="smollm2-135m", help="the served model's name")
    parser.add_argument("--out", default="patching_sweep.jsonl", type=pathlib.Path,
                        help="results, one JSON line per (pair, layer); appended to")
    parser.add_argument("--png", type=pathlib.Path,
                        help="the heatmap (default: --out with the suffix .png)")
    parser.add_argument("--layers-step", type=int, default=3,
                        help="patch every n-th layer, from layer 0")
    parser.add_argument("--pairs", type=pathlib.Path, help="a JSON file: a list of "
                        '{"clean", "corrupt", "answer", "wrong"} objects (default: built in)')
    parser.add_argument("--max-concurrency", type=int, default=4, help="jobs in flight")
    return parser.parse_args(argv)


def load_pairs(path) -> List[Pair]:
    if path is None:
        return DEFAULT_PAIRS
    return [Pair(**entry) for entry in json.loads(path.read_text())]


def single_token(model, text: str) -> int:
    ids = model.tokenizer.encode(text)
    if len(ids) != 1:
        raise SystemExit(f"{text!r} is {len(ids)} tokens; answers must be one token")
    return ids[0]


def check_pair(model, pair: Pair) -> None:
    """Exits with the reason unless the prompts have the same length and each answer is
    one token (before any job is sent)."""
    single_token(model, pair.answer), single_token(model, pair.wrong)
    clean, corrupt = (len(model.tokenizer.encode(p)) for p in (pair.clean, pair.corrupt))
    if clean != corrupt:
        raise SystemExit(f"{pair.clean!r} is {clean} tokens but {pair.corrupt!r} is {corrupt}: "
                         "patching position by position needs prompts of the same length")


def job_key(pair: Pair, layer: int) -> tuple:
    return (pair.clean, pair.corrupt, pair.answer, pair.wrong, layer)


def record_key(record: dict) -> tuple:
    return (record["clean"], record["corrupt"], record["answer"], record["wrong"],
            record["layer"])


def read_records(path: pathlib.Path) -> Dict[tuple, dict]:
    """The finished jobs in the results file, by (pair, layer)."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return {record_key(r): r for r in map(json.loads, filter(None, lines))}


def patch_layer(model, pair: Pair, layer: int) -> dict:
    """One job: the clean metric, the corrupt metric and the corrupt metric with the clean
    residual patched in at each position of ``layer``'s output."""
    answer, wrong = single_token(model, pair.answer), single_token(model, pair.wrong)
    positions = range(len(model.tokenizer.encode(pair.corrupt)))

    def metric():
        logits = model.lm_head.output[0, -1]
        return (logits[answer] - logits[wrong]).save()

    with model.session():
        with model.trace(pair.clean):
            clean_residual = model.model.layers[layer].output
            clean = metric()
        with model.trace() as tracer:
            with tracer.invoke(pair.corrupt):
                corrupt = metric()
            patched = []
            for position in positions:
                with tracer.invoke(pair.corrupt):
                    model.model.layers[layer].output[:, position] = clean_residual[:, position]
                    patched.append(metric())
    return {**asdict(pair), "layer": layer, "clean_diff": float(clean.value),
            "corrupt_diff": float(corrupt.value),
            "patched_diff": [float(p.value) for p in patched]}


class ResultsFile:
    """Appends one JSON line per finished job, from any thread, flushed at once."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict) -> dict:
        with self._lock, self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return record


def restored_share(record: dict) -> np.ndarray:
    """Per position: 0 = no better than the corrupt run, 1 = as good as the clean run."""
    gap = record["clean_diff"] - record["corrupt_diff"]
    return (np.array(record["patched_diff"]) - record["corrupt_diff"]) / gap


def write_heatmap(model, pairs: List[Pair], layers: List[int], records: Dict[tuple, dict],
                  path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 0.35 * len(layers) + 2.5),
                             squeeze=False)
    axes[0, 0].set_ylabel("patched layer (output)")
    for ax, pair in zip(axes[0], pairs):
        grid = np.array([restored_share(records[job_key(pair, layer)]) for layer in layers])
        image = ax.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
        tokens = [model.tokenizer.decode([i]) for i in model.tokenizer.encode(pair.corrupt)]
        ax.set_xticks(range(len(tokens)), tokens, rotation=60)
        ax.set_yticks(range(len(layers)), layers)
        ax.set(xlabel="patched position", title=f"{pair.clean!r} into\n{pair.corrupt!r}")
    fig.colorbar(image, ax=axes[0].tolist(), label="share of the gap restored")
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    model = glassbox.Model(args.model, url=args.url)
    pairs = load_pairs(args.pairs)
    for pair in pairs:
        check_pair(model, pair)
    layers = list(range(0, model.config["num_layers"], args.layers_step))
    done = read_records(args.out)
    todo = [(pair, layer) for pair in pairs for layer in layers
            if job_key(pair, layer) not in done]
    print(f"{len(pairs)} pairs x {len(layers)} layers: {len(pairs) * len(layers) - len(todo)} "
          f"jobs already in {args.out}, {len(todo)} to run")

    results = ResultsFile(args.out)
    glassbox.run_all([lambda p=pair, l=layer: results.append(patch_layer(model, p, l))
                      for pair, layer in todo], max_concurrency=args.max_concurrency)

    png = args.png or args.out.with_suffix(".png")
    write_heatmap(model, pairs, layers, read_records(args.out), png)
    print(f"heatmap: {png}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # run_all has cancelled what was in flight; every finished job is in the file.
        print("\ninterrupted: the jobs in flight were cancelled; finished ones are kept, so "
              "rerun the same command to resume", file=sys.stderr, flush=True)
        # Every finished job is already in the file; no thread left waiting may hold the
        # exit back (one waiting on a job the interrupt missed would, until that job ends).
        os._exit(130)
