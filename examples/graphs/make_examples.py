#!/usr/bin/env python3
"""Writes the example intervention graphs in examples/graphs/ (the JSON mirror of the wire
format, protocol/SPEC.md). Rerun from the repo root: python3 examples/graphs/make_examples.py
Each graph runs with: build/bin/glassbox-engine run --model models/SmolLM2-135M-Instruct.Q4_1.gguf --graph FILE
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = 30  # SmolLM2-135M


class Graph:
    def __init__(self):
        self.traces = []
        self.next_id = 0

    def trace(self, prompts, generate=None):
        t = {"invokes": [{"prompt": p} for p in prompts], "nodes": []}
        if generate:
            t["generate"] = generate
        self.traces.append(t)

    def node(self, op, args=(), **kwargs):
        nid = self.next_id
        self.next_id += 1
        self.traces[-1]["nodes"].append({"id": nid, "op": op, "args": list(args), "kwargs": kwargs})
        return {"ref": nid}

    def read(self, point, invoke=0, step=0):
        return self.node("read", point=point, invoke=invoke, step=step)

    def save(self, value, name):
        return self.node("save", [value], name=name)

    def write(self, path, graph_comment):
        body = {"model": "smollm2-135m", "traces": self.traces, "scan": False}
        doc = {"glassbox": 1, "type": "request", "body": body}
        with open(os.path.join(HERE, path), "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(f"{path}: {graph_comment}")


ALL = {"slice": [None, None, None]}
LAST = -1


def logit_lens():
    g = Graph()
    g.trace(["The capital of France is"])
    for layer in range(LAYERS):
        h = g.read(f"model.layers.{layer}.output")
        last = g.node("getitem", [h, [ALL, LAST]])
        logits = g.node("module", [g.node("module", [last], name="model.norm")], name="lm_head")
        g.save(g.node("argmax", [logits], dim=-1), f"layer{layer:02d}_top_token")
    g.write("logit_lens.json", "top next token read off every layer's residual stream")


def activation_patching():
    g = Graph()
    g.trace(["The capital of France is"])
    clean = g.read("model.layers.8.output")
    subject = g.node("getitem", [clean, [ALL, 3]])  # " France"
    g.trace(["The capital of Italy is"])
    g.node("write", [subject], point="model.layers.8.output", invoke=0, index=[ALL, 3])
    logits = g.read("lm_head.output")
    last = g.node("getitem", [logits, [0, LAST]])
    g.save(g.node("argmax", [last]), "patched_top_token")
    g.save(g.node("softmax", [last, -1]), "patched_probs")
    g.write("activation_patching.json",
            "clean subject residual (layer 8, ' France') patched into 'The capital of Italy is'")


def head_ablation():
    g = Graph()
    g.trace(["The capital of France is"])
    g.node("write", [0], point="blocks.5.attn.hook_z", invoke=0, index=[ALL, ALL, 3])
    logits = g.read("lm_head.output")
    g.save(g.node("softmax", [g.node("getitem", [logits, [0, LAST]]), -1]), "probs_without_head_5_3")
    g.write("head_ablation.json", "zero-ablate head 3 of layer 5, next-token probabilities")


def mean_head_ablation():
    g = Graph()
    g.trace(["The capital of France is"])
    z = g.read("blocks.5.attn.hook_z")
    head = g.node("getitem", [z, [ALL, ALL, 3]])
    mean = g.node("mean", [head], dim=1, keepdim=True)
    g.node("write", [mean], point="blocks.5.attn.hook_z", invoke=0, index=[ALL, ALL, 3])
    logits = g.read("lm_head.output")
    g.save(g.node("softmax", [g.node("getitem", [logits, [0, LAST]]), -1]), "probs_mean_ablated")
    g.write("mean_head_ablation.json", "mean-ablate head 3 of layer 5 over positions")


def steering():
    g = Graph()
    g.trace(["I love this movie", "I hate this movie"])
    love = g.node("getitem", [g.read("model.layers.10.output", invoke=0), [0, LAST]])
    hate = g.node("getitem", [g.read("model.layers.10.output", invoke=1), [0, LAST]])
    direction = g.node("mul", [g.node("sub", [love, hate]), 4.0])
    g.trace(["My review of the film: it was"], generate={"max_new_tokens": 16})
    h = g.read("model.layers.10.output", step="all")
    g.node("write", [g.node("add", [h, direction])], point="model.layers.10.output", invoke=0, step="all")
    g.write("steering.json", "add 4x (love - hate) at layer 10 during a 16-token generation")


def attention_pattern():
    g = Graph()
    g.trace(["The cat sat on the mat. The cat sat on the"])
    for layer in (0, 5, 15):
        g.save(g.read(f"blocks.{layer}.attn.hook_pattern"), f"pattern_layer{layer}")
    g.write("attention_pattern.json", "attention patterns of layers 0, 5 and 15")


def attribution_patching():
    g = Graph()
    g.trace(["The capital of France is"])
    clean = g.read("model.layers.8.output")
    g.trace(["The capital of Italy is"])
    corrupt = g.read("model.layers.8.output")
    logits = g.read("lm_head.output")
    last = g.node("getitem", [logits, [0, LAST]])
    paris, rome = 7042, 7268
    metric = g.node("sub", [g.node("getitem", [last, paris]), g.node("getitem", [last, rome])])
    back = g.node("backward", [metric])
    grad = g.node("grad", [back], point="model.layers.8.output", invoke=0)
    attribution = g.node("sum", [g.node("mul", [grad, g.node("sub", [clean, corrupt])])], dim=-1)
    g.save(attribution, "attribution_per_position")
    g.write("attribution_patching.json",
            "gradient x (clean - corrupt) at layer 8 for logit(' Paris') - logit(' Rome')")


if __name__ == "__main__":
    for make in (logit_lens, activation_patching, head_ablation, mean_head_ablation, steering,
                 attention_pattern, attribution_patching):
        make()
