"""Shared helpers for the Python client tests.

- ``FakeBackend``: a catalogue shaped like the engine's (made up here, no server; a
  Llama's, GPT-2's or GPT-NeoX's module paths with the same TransformerLens aliases) that
  records every request and answers with zeros for each saved node, so graph-building tests
  can look at exactly what a trace sends.
- ``engine`` / ``tiny_model`` / ``smollm2``: the real engine through LocalBackend, skipped
  with the reason when the binary (build/bin/glassbox-engine under the repository root, or
  $GLASSBOX_ENGINE) or the model is missing.
- Under the README's test command (ctest sets GLASSBOX_STRICT=1) every skip is a failure:
  a missing model, binary or Redis must not pass unnoticed.
"""

import os
import pathlib
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "client"))

import glassbox  # noqa: E402
from glassbox import launcher, wire  # noqa: E402
from glassbox.service import ServiceBackend  # noqa: E402

STRICT = os.environ.get("GLASSBOX_STRICT") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With GLASSBOX_STRICT=1, a test that skipped (in its body or a fixture) fails, with the
    skip's reason."""
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under the test command (GLASSBOX_STRICT=1): {reason}"


TINY_LLAMA = ROOT / "tests" / "fixtures" / "tiny_llama"
SMOLLM2 = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

_D = ["batch", "seq", "8"]
_LAYER_POINTS = {
    # point -> (aliases with {n} for the layer, shape, skippable), as the engine has them
    "input": (["blocks.{n}.hook_resid_pre"], _D, False),
    "input_layernorm.input": (["blocks.{n}.ln1.hook_input"], _D, False),
    "input_layernorm.output": (["blocks.{n}.ln1.hook_normalized"], _D, False),
    "self_attn.input": (["blocks.{n}.attn.hook_input"], _D, False),
    "self_attn.q_proj.input": ([], _D, False),
    "self_attn.q_proj.output": ([], _D, False),
    "self_attn.q": (["blocks.{n}.attn.hook_q"], ["batch", "seq", "2", "4"], False),
    "self_attn.attn_pattern": (["blocks.{n}.attn.hook_pattern"], ["batch", "2", "seq", "k_seq"],
                               False),
    "self_attn.z": (["blocks.{n}.attn.hook_z"], ["batch", "seq", "2", "4"], False),
    "self_attn.output": (["blocks.{n}.hook_attn_out"], _D, True),
    "post_attention_layernorm.input": (["blocks.{n}.hook_resid_mid"], _D, False),
    "post_attention_layernorm.output": (["blocks.{n}.ln2.hook_normalized"], _D, False),
    "mlp.input": (["blocks.{n}.mlp.hook_input"], _D, False),
    "mlp.output": (["blocks.{n}.hook_mlp_out"], _D, True),
    "output": (["blocks.{n}.hook_resid_post"], _D, True),
}
# The module paths of the other families, as (Llama's spelling, theirs) replacements.
_FAMILY_PATHS = {
    "llama": [],
    "gpt2": [("model.embed_tokens", "transformer.wte"), ("model.layers", "transformer.h"),
             ("self_attn.q_proj", "attn.c_attn"), ("self_attn", "attn"),
             ("input_layernorm", "ln_1"), ("post_attention_layernorm", "ln_2"),
             ("model.norm", "transformer.ln_f")],
    "neox": [("model.embed_tokens", "gpt_neox.embed_in"), ("model.layers", "gpt_neox.layers"),
             ("self_attn.q_proj", "attention.query_key_value"), ("self_attn", "attention"),
             ("model.norm", "gpt_neox.final_layer_norm"), ("lm_head", "embed_out")],
}


def fake_catalogue(layers: int = 3, family: str = "llama") -> dict:
    """A small catalogue in the shape `glassbox-engine info` prints, with a Llama's module
    paths or those of GPT-2 ("gpt2") or GPT-NeoX ("neox"); the logits come last."""
    points = [_point("model.embed_tokens.output", ["hook_embed"], _D)]
    for n in range(layers):
        for suffix, (aliases, shape, skippable) in _LAYER_POINTS.items():
            points.append(_point(f"model.layers.{n}.{suffix}", [a.format(n=n) for a in aliases],
                                 shape, n, skippable))
    points += [_point("model.norm.input", ["ln_final.hook_input"], _D),
               _point("model.norm.output", ["ln_final.hook_normalized"], _D),
               _point("lm_head.input", ["unembed.hook_input"], _D),
               _point("lm_head.output", ["unembed.hook_logits"], ["batch", "seq", "16"])]
    for point in points:
        for llama, theirs in _FAMILY_PATHS[family]:
            point["name"] = point["name"].replace(llama, theirs)
    return {"hook_points": points, "model": {"num_layers": layers, "hidden_size": 8}}


def _point(name, aliases, shape, layer=-1, skippable=False) -> dict:
    point = {"name": name, "aliases": aliases, "dtype": "float32", "shape": shape,
             "layer": layer, "meaning": ""}
    return {**point, "skippable": True} if skippable else point


class FakeBackend(glassbox.Backend):
    """Records requests; answers each save with zeros (or what `answer` returns)."""

    def __init__(self, layers: int = 3, answer=None, family: str = "llama"):
        self._catalogue = fake_catalogue(layers, family)
        self.requests = []
        self.answer = answer

    def catalogue(self) -> dict:
        return self._catalogue

    def run(self, request: wire.Request) -> wire.Result:
        # Every request a trace sends must survive the codec (as the service will decode it).
        encoded = wire.encode_request(request)
        assert wire.decode_request(encoded) is not None
        self.requests.append(request)
        if self.answer is not None:
            return self.answer(request)
        saved = [wire.SavedValue(f"node_{n.id}", n.id, np.zeros((1, 2), np.float32))
                 for t in request.traces for n in t.nodes if n.op == "save"]
        return wire.Result(saved=saved)

    @property
    def last(self) -> wire.Request:
        return self.requests[-1]


@pytest.fixture
def fake():
    return FakeBackend()


@pytest.fixture
def model(fake):
    return glassbox.Model("fake", backend=fake, arrays="numpy")


def bin_dir() -> pathlib.Path:
    """Where the built binaries are: $GLASSBOX_BIN_DIR or build/bin."""
    return pathlib.Path(os.environ.get("GLASSBOX_BIN_DIR") or ROOT / "build" / "bin")


def engine_binary() -> pathlib.Path:
    return pathlib.Path(os.environ.get("GLASSBOX_ENGINE") or bin_dir() / "glassbox-engine")


@pytest.fixture(scope="session")
def engine() -> str:
    path = engine_binary()
    if not path.is_file():
        pytest.skip(f"no engine binary at {path} (build it, or set GLASSBOX_ENGINE)")
    return str(path)


@pytest.fixture(scope="session")
def tiny_model(engine):
    return glassbox.Model("tiny-llama", backend=glassbox.LocalBackend(TINY_LLAMA, engine=engine),
                          arrays="numpy")


@pytest.fixture(scope="session")
def smollm2(engine):
    if not SMOLLM2.is_file():
        pytest.skip(f"no model at {SMOLLM2} (./setup.sh downloads it)")
    return glassbox.Model("smollm2-135m", backend=glassbox.LocalBackend(SMOLLM2, engine=engine),
                          arrays="numpy")


@dataclass
class Service:
    url: str
    api_key: str
    hold: Optional[pathlib.Path] = None  # while this file exists, the worker holds its jobs unrun


@pytest.fixture(scope="session")
def smollm2_service():
    """One local service for the whole session — Redis, the broker and a SmolLM2 worker
    named "smollm2-135m", with API keys on, as `glassbox up` runs it — for the notebooks and
    the example scripts. Skipped, saying what is missing, without the binaries or the model."""
    with tempfile.TemporaryDirectory(prefix="glassbox-smollm2-") as data_dir:
        hold = pathlib.Path(data_dir) / "hold"
        params = launcher.ServiceParams(
            model_path=str(SMOLLM2), port=launcher.free_port(),
            worker_port=launcher.free_port(), data_dir=data_dir, bind="127.0.0.1",
            engine_args=("--threads", "1", "--hold-file", str(hold)))
        service = launcher.LocalService(params)
        try:
            service.check()
        except glassbox.GlassboxError as e:
            pytest.skip(f"needs a built service and the model: {e.message}")
        with service:
            running = Service(params.url, service.create_key("tests"), hold)
            backend = ServiceBackend(running.url, running.api_key, quiet=True)
            try:
                service.wait_until_serving(backend, params.model_name)
            finally:
                backend.close()
            yield running
