#!/usr/bin/env python3
"""Glassbox's two LibTorch lanes side by side, and Glassbox against transformers' eager forward.

Runs, in one process tree on this machine, interleaved round by round:
  * build/bin/engine_bench        (Debian's LibTorch 1.13, OpenBLAS)
  * build-torch2/bin/engine_bench (LibTorch 2.x from the PyPI wheel: ./setup.sh --torch pip)
  * with --transformers: transformers' eager forward of the same model and shapes, on the
    PyPI torch of the Python running this script (the fixture environment: $FIXTURE_PYTHON has
    torch and transformers; Glassbox itself never imports them)
once as the machine is and once beside a competing load (a process keeping one core busy);
the load average is printed with each, so a quiet machine can be told from a busy one.
Prints per shape the median forward time of each and the ratios, and the 2.x lane's matrix
products alone (engine_bench's "matmul bound": the projections, lm_head and attention
products of the same pass, on the same weights) against transformers' whole forward: the
floor below which no forward with those products can go. Asserts nothing.

    $FIXTURE_PYTHON bench/compare_lanes.py [--transformers] [--rounds 3] [--shapes 1x16,1x128,8x64]
"""
import argparse
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LANES = {"1.13": REPO / "build" / "bin" / "engine_bench",
         "2.x": REPO / "build-torch2" / "bin" / "engine_bench"}
LINE = re.compile(r"forward\s+(\d+)x(\d+)\s+matmul bound\s+([\d.]+) ms\s+no hooks\s+([\d.]+) ms")


def engine_times(binary: Path, shapes: str, repeats: int, threads: int) -> dict:
    """{shape: (no-hooks ms, matmul-bound ms)} from one engine_bench run."""
    out = subprocess.run([str(binary), "--model", str(MODEL), "--shapes", shapes, "--repeats",
                          str(repeats), "--no-generate", "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    times = {}
    for m in LINE.finditer(out):
        times[f"{m.group(1)}x{m.group(2)}"] = (float(m.group(4)), float(m.group(3)))
    return times


class Transformers:
    """transformers' eager float32 forward of the same GGUF (dequantized by gguf-py)."""

    def __init__(self, threads: int):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        import transformers
        torch.set_num_threads(threads)
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            str(MODEL.parent), gguf_file=MODEL.name, dtype=torch.float32,
            attn_implementation="eager").eval()
        self.vocab = self.model.config.vocab_size

    def time_ms(self, batch: int, seq: int, repeats: int) -> float:
        ids = self.torch.tensor([[(i * 7919 + 13) % self.vocab for i in range(seq)]] * batch)
        times = []
        with self.torch.no_grad():
            for r in range(repeats + 1):
                start = time.perf_counter()
                self.model(input_ids=ids, use_cache=False)
                if r:
                    times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def busy():
    """The competing load: one core kept busy."""
    x = 0
    while True:
        x = (x * 1103515245 + 12345) % 2**31


def run(args, label: str, hf):
    rows = {s: {k: [] for k in ("1.13", "2.x", "hf")} for s in args.shapes.split(",")}
    products = {s: [] for s in rows}  # the 2.x lane's matrix products alone, same pass
    for _ in range(args.rounds):
        for lane, binary in LANES.items():
            if binary.exists():
                for shape, (ms, bound) in engine_times(binary, args.shapes, args.repeats,
                                                       args.threads[lane]).items():
                    rows[shape][lane].append(ms)
                    if lane == "2.x":
                        products[shape].append(bound)
        if hf:
            for shape in rows:
                b, s = map(int, shape.split("x"))
                rows[shape]["hf"].append(hf.time_ms(b, s, args.repeats))
    print(f"== {label}: median forward ms over {args.rounds} rounds (no hooks, float32, SmolLM2; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    for shape, t in rows.items():
        med = {k: statistics.median(v) for k, v in t.items() if v}
        text = "  ".join(f"{k} {v:8.2f}" for k, v in med.items())
        ratios = []
        if "1.13" in med and "2.x" in med:
            ratios.append(f"2.x/1.13 {med['2.x'] / med['1.13']:.2f}x")
        if "hf" in med:
            for lane in ("2.x", "1.13"):
                if lane in med:
                    ratios.append(f"glassbox {lane} / transformers {med[lane] / med['hf']:.2f}x")
            if products[shape]:  # the floor: no pass of these products can be faster
                floor = statistics.median(products[shape]) / med["hf"]
                ratios.append(f"2.x products alone / transformers {floor:.2f}x")
        print(f"  {shape:>7}  {text}   {'  '.join(ratios)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--transformers", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="1x16,1x128,8x64")
    parser.add_argument("--threads-113", type=int, default=1,
                        help="LibTorch threads for the 1.13 lane (OpenBLAS brings its own)")
    parser.add_argument("--threads-2x", type=int, default=os.cpu_count(),
                        help="LibTorch threads for the 2.x lane and transformers (its matrix "
                        "products use LibTorch's threads)")
    args = parser.parse_args()
    args.threads = {"1.13": args.threads_113, "2.x": args.threads_2x}
    missing = [str(b) for b in LANES.values() if not b.exists()]
    if missing:
        print("not built (run ./setup.sh and ./setup.sh --torch pip): " + ", ".join(missing),
              file=sys.stderr)
    hf = Transformers(args.threads_2x) if args.transformers else None
    run(args, "no added load", hf)
    load = multiprocessing.Process(target=busy, daemon=True)
    load.start()
    try:
        run(args, "beside a process keeping one core busy", hf)
    finally:
        load.terminate()


if __name__ == "__main__":
    main()
