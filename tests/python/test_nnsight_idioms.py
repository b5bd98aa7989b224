"""nnsight 0.8 code runs with one changed line (issue 15, item 1): each test runs the
nnsight-style code as nnsight users write it, with `glassbox.Model` in place of
`LanguageModel`, on the tiny Llama through the real engine; values are compared with the
transformers goldens of tests/fixtures/tiny_llama (written by transformers itself)."""

import importlib.util
import json
import pickle
import struct

import numpy as np
import pytest

import glassbox
from glassbox import TracingError

from conftest import TINY_LLAMA, FakeBackend

def _header():
    with open(TINY_LLAMA / "golden.safetensors", "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        return 8 + size, json.loads(f.read(size))


def golden(name: str) -> np.ndarray:
    """One tensor of golden.safetensors (transformers' activations for IDS)."""
    start_of_data, header = _header()
    entry = header[name]
    assert entry["dtype"] == "F32"
    start, end = entry["data_offsets"]
    with open(TINY_LLAMA / "golden.safetensors", "rb") as f:
        f.seek(start_of_data + start)
        return np.frombuffer(f.read(end - start), np.float32).reshape(entry["shape"])


IDS = json.loads(_header()[1]["__metadata__"]["input_ids"])  # the goldens' prompt


def close(a, b, tol=1e-4):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol * max(1.0, np.abs(b).max())


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


GREEDY = json.loads((TINY_LLAMA / "golden_generate.json").read_text())
GEN_IDS = GREEDY["prompt_ids"]


def test_model_output_device_and_trace_keywords(model):
    with model.trace(IDS, remote=True, scan=False, validate=True):
        logits = model.output.logits.save()
        out = model.output.save()
        hidden = model.model.layers[1].output.to(model.device).save()
    close(logits, golden("lm_head.output"))
    close(out.logits, golden("lm_head.output"))
    close(hidden, golden("model.layers.1.output"))


def test_generator_output_is_prompt_and_new_tokens(model):
    with model.generate(GEN_IDS, max_new_tokens=GREEDY["max_new_tokens"], remote=True) as tracer:
        output = model.generator.output.save()
    assert np.asarray(output).tolist() == [GREEDY["prompt_ids"] + GREEDY["generated_ids"]]


def test_barrier_stop_log_and_print(model, capsys):
    with model.trace(IDS) as tracer:
        tracer.barrier(1)
        hidden = model.model.layers[0].output.save()
        print(hidden)
        tracer.log("mean:", model.model.layers[0].output.mean())
        tracer.stop()
        raise AssertionError("the lines after tracer.stop() do not run")  # noqa: B012
    printed = capsys.readouterr().out.splitlines()
    assert "a traced value" in printed[0] and "tracer.log(x)" in printed[0]
    assert printed[1].startswith("mean: ")
    assert float(printed[1].split()[1]) == pytest.approx(golden("model.layers.0.output").mean(),
                                                         rel=1e-4)
    close(hidden, golden("model.layers.0.output"))


def test_inputs_are_args_and_kwargs(model):
    with model.trace(IDS):
        args, kwargs = model.model.layers[1].mlp.inputs
        mlp_in = args[0].save()
    assert kwargs == {}
    close(mlp_in, golden("model.layers.1.mlp.input"))


def test_a_saved_list_collects_one_value_per_step(model):
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        logits = glassbox.list().save()
        with tracer.iter[:]:
            logits.append(model.lm_head.output)
        ids = glassbox.list().save()
        with tracer.all():
            ids.append(model.lm_head.output[0, -1].argmax(dim=-1))
    assert len(logits) == 3 and len(ids) == 3
    assert [int(i) for i in ids] == GREEDY["generated_ids"][:3]
    assert [np.asarray(x).argmax(-1)[0, -1] for x in logits] == GREEDY["generated_ids"][:3]


def test_iter_with_a_list_of_steps_and_next(model):
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        first = model.lm_head.output[0, -1].argmax(dim=-1).save()
        tracer.next()
        second = model.lm_head.output[0, -1].argmax(dim=-1).save()
        chosen = glassbox.list().save()
        for step in tracer.iter[[0, 2]]:
            chosen.append(model.lm_head.output[0, -1].argmax(dim=-1))
        with pytest.raises(TracingError, match="for step in tracer.iter"):
            with tracer.iter[[0, 2]]:
                pass
    new = GREEDY["generated_ids"]
    assert (int(first), int(second)) == (new[0], new[1])
    assert [int(c) for c in chosen] == [new[0], new[2]]


def test_requires_grad_and_grad(model):
    with model.trace(IDS):
        hidden = model.model.layers[1].output
        hidden.requires_grad_(True)
        logits = model.lm_head.output
        with logits[0, -1, 5].backward():
            grad = hidden.grad.save()
    assert grad.shape == (1, len(IDS), 64)
    assert np.abs(np.asarray(grad)[0, :-1]).max() > 0  # earlier positions feed the last


def test_cache_is_addressable_as_nnsight_does(model):
    with model.trace(IDS) as tracer:
        cache = tracer.cache(modules=[model.model.layers[2]])
    close(cache["model.model.layers.2"].output, golden("model.layers.2.output"))
    close(cache.model.model.layers[2].output, golden("model.layers.2.output"))
    close(cache["model.model.layers.2.mlp"].input, golden("model.layers.2.mlp.input"))
    assert all(".2." in name for name in cache)  # layer 2 only
    with pytest.raises(KeyError, match="did you mean 'model.model.layers.2'"):
        cache["model.model.layer.2"]


def test_cache_of_a_module_is_that_module_only():
    fake = FakeBackend(layers=12)
    model = glassbox.Model("fake", backend=fake, arrays="numpy")
    with model.trace("hi") as tracer:
        tracer.cache(modules=[model.model.layers[1]])
    assert [n.kwargs["filter"] for n in fake.last.traces[0].nodes] == ["model.layers.1."]


def test_scan_sizes_are_python_ints(model):
    with model.scan(IDS):
        dim = model.model.layers[0].output.shape[-1]
        seq = model.model.layers[0].output.shape[1]
        heads = model.model.layers[0].self_attn.z.shape[2]
        assert (dim, seq, heads) == (64, len(IDS), 4) and type(dim) is int
        model.model.layers[0].output.save()
    assert dim == golden("model.layers.0.output").shape[-1]


def test_shapes_known_while_tracing_match_the_values_in_a_generation(model):
    with model.generate(GEN_IDS, max_new_tokens=2) as tracer:
        shapes, values = [], []
        for step in range(2):
            for point in (model.lm_head.output, model.model.layers[0].self_attn.attn_pattern):
                shapes.append(point.shape)
                values.append(point.save())
            tracer.next() if step == 0 else None
    assert [tuple(s) for s in shapes] == [tuple(np.shape(v)) for v in values]


def test_skip_in_a_generation_is_per_step_or_refused(model):
    with pytest.raises(TracingError, match="inside `with tracer.all"):
        with model.generate(IDS, max_new_tokens=2):
            model.model.layers[1].skip(model.model.layers[1].input)
    with model.generate(IDS, max_new_tokens=2) as tracer:
        with tracer.all():
            model.model.layers[1].skip(model.model.layers[1].input)
            out = model.model.layers[1].output.save()
            inp = model.model.layers[1].input.save()
    for o, i in zip(out, inp):
        close(o, i, 0)


def test_edits_in_a_generation_apply_as_nnsight_08s(model):
    # nnsight 0.8's docs/usage/edit.md, verbatim but for the model: a plain edit applies at
    # the location's first occurrence (the prompt's pass); under the edit tracer's iter, at
    # every step of the generation; inplace=True binds only the tracer.
    with model.edit() as (tracer, edited):
        edited.model.layers[0].mlp.output[:] = 0
    with model.edit(inplace=True) as tracer:
        for _ in tracer.iter[:]:
            model.model.layers[0].mlp.output[:] = 0
    try:
        for m, every_step in ((edited, False), (model, True)):
            with m.generate(GEN_IDS, max_new_tokens=3) as tracer:
                outs = glassbox.list().save()
                for _ in tracer.iter[:]:
                    outs.append(m.model.layers[0].mlp.output)
            assert np.abs(np.asarray(outs[0])).max() == 0
            for later in outs[1:]:
                assert (np.abs(np.asarray(later)).max() == 0) == every_step
    finally:
        model.clear_edits()
    with model.generate(GEN_IDS, max_new_tokens=2) as tracer:  # cleared: nothing zeroed
        first = model.model.layers[0].mlp.output.save()
    assert np.abs(np.asarray(first)).max() > 0


def test_attention_output_is_a_tuple(model):
    with model.trace(IDS):
        attn = model.model.layers[0].self_attn.output[0].save()
        weights = model.model.layers[0].self_attn.output[1].save()
        out, _ = model.model.layers[1].self_attn.output
        out[:] = 0
        after = model.model.layers[1].output.save()
        with pytest.raises(TracingError, match=r"a tuple \(attn_output, attn_weights\)"):
            model.model.layers[0].self_attn.output[:, -1]
    close(attn, golden("model.layers.0.self_attn.output"))
    close(weights, golden("model.layers.0.self_attn.attn_pattern"))
    # attention zeroed: layer 1's output is its input plus its MLP of the normed input only
    assert not np.allclose(np.asarray(after), golden("model.layers.1.output"))


def test_edit_config_tensor_ids_and_device(model):
    import importlib.util

    with model.edit() as (tracer, edited):
        model.model.layers[0].mlp.output[:] = 0
    with edited.trace(IDS):
        mlp = model.model.layers[0].mlp.output.save()
    assert np.abs(np.asarray(mlp)).max() == 0
    with model.edit() as edited_too:
        model.model.layers[0].mlp.output[:] = 0
    assert edited_too is not model
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 64
    with pytest.raises(AttributeError, match="did you mean"):
        model.config.hiden_size
    ids = np.array([IDS])
    if importlib.util.find_spec("torch"):
        import torch

        ids = torch.tensor([IDS])
    with model.trace(ids):
        hidden = model.model.layers[0].output
        hidden.to(hidden.device)
        saved = hidden.save()
    close(saved, golden("model.layers.0.output"))


def test_torch_style_functions_on_traced_values(model):
    with model.trace(IDS):
        h = model.model.layers[1].output
        normed = glassbox.functions.normalize(h, dim=-1).save()
        norm = glassbox.functions.norm(h, dim=-1).save()
        positive = glassbox.functions.all(h.abs() >= 0).save()
        heads = glassbox.rearrange(model.model.layers[1].self_attn.z,
                                   "b s h d -> b h s d").save()
        merged = glassbox.rearrange(model.model.layers[1].self_attn.z,
                                    "b s h d -> b s (h d)").save()
        split = glassbox.rearrange(h, "b s (h d) -> b s h d", h=4).save()
    ref = golden("model.layers.1.output")
    close(norm, np.linalg.norm(ref, axis=-1))
    close(normed, ref / np.linalg.norm(ref, axis=-1, keepdims=True))
    assert bool(positive)
    z = golden("model.layers.1.self_attn.z")
    close(heads, z.transpose(0, 2, 1, 3))
    close(merged, z.reshape(1, len(IDS), -1))
    close(split, ref.reshape(1, len(IDS), 4, 16))


def test_saved_scalars_have_shape_and_pickle(model):
    with model.trace(IDS):
        total = model.model.layers[1].output.sum().save()
    assert tuple(np.shape(total.value)) == ()
    assert float(pickle.loads(pickle.dumps(total))) == pytest.approx(float(total.value))


if importlib.util.find_spec("torch"):  # (only where torch is: a skip fails under ./test.sh)
    def test_torch_functions_on_traced_values(model):
        import torch
        import torch.nn.functional as F

        with model.trace(IDS):
            h = model.model.layers[1].output
            probs = F.softmax(h, dim=-1).save()
            gelu = F.gelu(h).save()
            norm = torch.norm(h, dim=-1).save()
            ok = torch.all(h == h).save()
        ref = torch.from_numpy(golden("model.layers.1.output").copy())
        close(probs, torch.softmax(ref, dim=-1))
        close(gelu, F.gelu(ref))
        close(norm, torch.norm(ref, dim=-1))
        assert bool(ok)

    def test_an_error_inside_a_torch_function_names_the_users_line(model):
        import torch.nn.functional as F

        with pytest.raises(TracingError) as caught:
            with model.trace(IDS):
                F.cross_entropy(model.lm_head.output[0], model.lm_head.output[0])  # line A
        line_a = [n for n, text in enumerate(open(__file__).read().splitlines(), 1)
                  if text.rstrip().endswith("# line A")][0]
        assert caught.value.source.endswith(f"test_nnsight_idioms.py:{line_a}")
        assert "cross_entropy" in caught.value.message


# Corner cases of the idioms above, each as nnsight 0.7's sources and docs define it
# (src/nnsight/intervention/tracing/{tracer,iterator}.py, docs/usage/*.md).


def test_a_barrier_is_called_in_each_invoke(model):
    # nnsight's InterleavingTracer.barrier docstring, on the tiny Llama
    other = [7, 8, 9, 10, 11]
    with model.generate(max_new_tokens=3) as tracer:
        barrier = tracer.barrier(2)

        with tracer.invoke(GEN_IDS):
            embeddings = model.model.embed_tokens.output
            barrier()
            output1 = model.generator.output.save()

        with tracer.invoke(other):
            barrier()
            model.model.embed_tokens.output = embeddings
            output2 = model.generator.output.save()
    new = GREEDY["generated_ids"][:3]
    assert np.asarray(output1).tolist() == [GEN_IDS + new]  # an invoke's own row
    assert np.asarray(output2).tolist() == [other + new]  # the first prompt's embeddings


def test_next_takes_step_and_iter_starts_at_the_current_step(model):
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        first = model.lm_head.output[0, -1].argmax(dim=-1).save()
        tracer.next(step=1)
        rest = glassbox.list().save()
        for step in tracer.iter[:]:                 # nnsight: from the current step on
            rest.append(model.lm_head.output[0, -1].argmax(dim=-1))
        model.model.layers[0].next(step=1)
        last = model.lm_head.output[0, -1].argmax(dim=-1).save()
    new = GREEDY["generated_ids"]
    assert int(first) == new[0] and [int(t) for t in rest] == new[1:3] and int(last) == new[2]


def test_iter_over_a_list_runs_its_steps_in_order(model):
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        chosen, steps = glassbox.list().save(), []
        for step in tracer.iter[[2, 0]]:            # nnsight sorts the steps
            steps.append(step)
            chosen.append(model.lm_head.output[0, -1].argmax(dim=-1))
    new = GREEDY["generated_ids"]
    assert steps == [0, 2] and [int(c) for c in chosen] == [new[0], new[2]]


def test_tracer_result(model):
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        output = tracer.result.save()
    assert np.asarray(output).tolist() == [GEN_IDS + GREEDY["generated_ids"][:3]]
    with model.trace(IDS) as tracer:
        result = tracer.result.save()
    close(result.logits, golden("lm_head.output"))


def test_cache_takes_modules_positionally_and_as_nnsight_paths(model):
    with model.trace(IDS) as tracer:
        cache = tracer.cache([model.model.layers[2]], include_inputs=True)
        by_path = tracer.cache(modules=["model.model.layers.2", "model.lm_head"],
                               device=model.device, detach=True)
    assert all(".2." in name for name in cache)  # layer 2 only, not a substring match
    close(cache["model.model.layers.2"].output, golden("model.layers.2.output"))
    close(cache.model.model.layers[2].inputs[0][0], golden("model.layers.2.input"))
    close(by_path["model.lm_head"].output, golden("lm_head.output"))
    close(by_path["model.model.layers.2"].output, golden("model.layers.2.output"))
    assert all(".2." in name or name.startswith("lm_head.") for name in by_path)


def test_cache_in_a_generation_holds_every_step(model):
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        cache = tracer.cache(modules=[model.lm_head])
    entries = cache["model.lm_head"]                # nnsight: one entry per step
    assert isinstance(entries, list) and len(entries) == 3
    assert [int(np.asarray(e.output)[0, -1].argmax()) for e in entries] == \
        GREEDY["generated_ids"][:3]


def test_nnsight_save_function(model):
    with model.trace(IDS):
        hidden = glassbox.save(model.model.layers[1].output)
        dim = glassbox.save(model.model.layers[1].output.shape[-1])
        both = glassbox.save([model.model.layers[0].output, model.model.layers[2].output])
    close(hidden, golden("model.layers.1.output"))
    assert dim == 64
    close(both[0], golden("model.layers.0.output"))
    close(both[1], golden("model.layers.2.output"))


def test_skip_with_a_tuple_and_inputs_assignment(model):
    with model.trace(IDS):
        # nnsight's Envoy.skip docstring: the layer replaced by its input
        model.model.layers[1].skip((model.model.layers[1].input, None))
        out = model.model.layers[1].output.save()
        inp = model.model.layers[1].input.save()
        args, kwargs = model.model.layers[0].mlp.inputs
        model.model.layers[0].mlp.inputs = ((args[0] * 0,), kwargs)
        mlp_in = model.model.layers[0].mlp.input.save()
    close(out, inp, 0)
    assert np.abs(np.asarray(mlp_in)).max() == 0


# The idioms of nnsight 0.8's own docs (docs/usage/*.md), each nearly verbatim: the model is
# the tiny Llama (model.model.layers for model.transformer.h) and glassbox.save for
# nnsight.save; values are compared with the goldens or an equivalent Glassbox formulation.

OTHER = [7, 8, 9]  # a second prompt, shorter than IDS and GEN_IDS


def test_cache_observes_values_after_interventions(model):
    # docs/usage/cache.md, "Cache + interventions"
    with model.trace(IDS) as tracer:
        cache = tracer.cache()
        model.model.layers[0].output[:] = 0
    assert (cache["model.model.layers.0"].output == 0).all()
    with model.trace(IDS):
        model.model.layers[0].output[:] = 0
        after = model.model.layers[1].output.save()
    close(cache.model.model.layers[1].output, after)
    close(cache["model.model.layers.0"].input, golden("model.layers.0.input"))
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:  # at every step written
        cache = tracer.cache(modules=[model.model.layers[2]])
        with tracer.all():
            model.model.layers[2].mlp.output[:, -1] = 0
    assert all((np.asarray(o)[:, -1] == 0).all() for o in cache["model.model.layers.2.mlp"].output)


def test_cache_of_a_generation_reads_as_nnsight_08s(model):
    # docs/usage/cache.md, "Cache across generation steps" and "Single vs multiple visits"
    with model.generate(GEN_IDS, max_new_tokens=3, do_sample=False) as tracer:
        cache = tracer.cache(modules=[model.model.layers[-1], model.lm_head])
        outs = glassbox.list().save()
        for step in tracer.iter[:3]:
            outs.append(model.model.layers[-1].output)
    assert len(cache["model.model.layers.2"]) == 3
    outputs = cache["model.model.layers.2"].output
    assert isinstance(outputs, list) and len(outputs) == 3
    for cached, read in zip(outputs, outs):
        close(cached, read, 0)
    for cached, read in zip(cache.model.model.layers[2].output, outs):
        close(cached, read, 0)
    ids = [int(np.asarray(o)[0, -1].argmax()) for o in cache.lm_head.output]
    assert ids == GREEDY["generated_ids"][:3]


def test_cache_storage_keywords_of_nnsight_08(model):
    # docs/usage/cache.md, "Storage transforms"
    with model.trace(IDS) as tracer:
        cache = tracer.cache(
            modules=[model.model.layers[1]],
            device=model.device,
            dtype=np.float32,
            detach=True,
            include_output=True,
            include_inputs=False,
            non_blocking=False,
        )
    close(cache["model.model.layers.1"].output, golden("model.layers.1.output"))


def test_skip_in_every_invoke_fills_each_invokes_rows(model):
    # docs/usage/skip.md, "Skip across invokes": each invoke's replacement fills its rows
    with model.trace() as tracer:
        with tracer.invoke(IDS):
            model.model.layers[1].skip(model.model.layers[1].input)
            first = model.lm_head.output.save()
        with tracer.invoke(OTHER):
            model.model.layers[1].skip(model.model.layers[1].input * 2)
            second = model.lm_head.output.save()
    for prompt, scale, batched in ((IDS, 1, first), (OTHER, 2, second)):
        with model.trace(prompt):
            model.model.layers[1].skip(model.model.layers[1].input * scale)
            alone = model.lm_head.output.save()
        close(batched, alone)
    with pytest.raises(TracingError, match="has to cover every row"):
        with model.trace() as tracer:
            with tracer.invoke(IDS):
                model.model.layers[1].skip(model.model.layers[1].input)
            with tracer.invoke(OTHER):
                pass


def test_each_invoke_counts_its_own_steps(model):
    # docs/usage/invoke-and-batching.md, "Per-invoke iteration and cache"
    with model.generate(max_new_tokens=3, do_sample=False) as tracer:
        with tracer.invoke(GEN_IDS):
            first = glassbox.save([])
            for _ in tracer.iter[1:3]:
                first.append(model.lm_head.output[0][-1].argmax(dim=-1))
        with tracer.invoke(GEN_IDS):
            second = glassbox.save([])
            for _ in tracer.iter[:3]:
                second.append(model.lm_head.output[0][-1].argmax(dim=-1))
    new = GREEDY["generated_ids"]
    assert [int(t) for t in first] == new[1:3] and [int(t) for t in second] == new[:3]
    with model.generate(max_new_tokens=3) as tracer:  # a step moved on in one invoke only
        with tracer.invoke(GEN_IDS):
            tracer.next()
            moved = model.lm_head.output[0][-1].argmax(dim=-1).save()
        with tracer.invoke(GEN_IDS):
            own = model.lm_head.output[0][-1].argmax(dim=-1).save()
    assert (int(moved), int(own)) == (new[1], new[0])


def test_save_a_dict_keyed_by_identity(model):
    # docs/usage/invoke-and-batching.md, "Save by identity, not by position"
    with model.trace() as tracer:
        norms = glassbox.save({})
        for layer in [2, 0, 1]:
            with tracer.invoke(IDS):
                norms[layer] = model.model.layers[layer].output.norm()
    assert sorted(norms) == [0, 1, 2]
    for layer in range(3):
        assert float(norms[layer]) == pytest.approx(
            float(np.linalg.norm(golden(f"model.layers.{layer}.output"))), rel=1e-4)


def test_for_step_in_tracer_all_and_an_empty_invoke_after_it(model):
    # docs/usage/iter-all-next.md: "tracer.all()" and "When the step count is unknown"
    with model.generate(GEN_IDS, max_new_tokens=3, do_sample=False) as tracer:
        hidden = glassbox.save([])
        for step in tracer.all():                     # == tracer.iter[:]
            model.model.layers[0].output[:] = 0       # zero-ablate layer 0 every step
            hidden.append(model.model.layers[-1].output)
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        with tracer.all():
            model.model.layers[0].output[:] = 0
            expected = model.model.layers[-1].output.save()
    assert len(hidden) == 3
    for got, want in zip(hidden, expected):
        close(got, want, 0)
    with model.generate(max_new_tokens=3, do_sample=False) as tracer:
        with tracer.invoke(GEN_IDS):
            picks = glassbox.save([])
            for step in tracer.all():
                picks.append(model.lm_head.output[0, -1].argmax(dim=-1))
        with tracer.invoke():
            ids = tracer.result.save()
    assert [int(p) for p in picks] == GREEDY["generated_ids"][:3]
    assert np.asarray(ids).tolist() == [GEN_IDS + GREEDY["generated_ids"][:3]]


def test_writes_through_an_index_of_a_hook_value(model):
    # docs/usage/all-and-next.md and iter.md: `output[0][:] = 0`, at every step or one
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        hidden_states = glassbox.list().save()
        for step in tracer.all():
            model.model.layers[0].output[0][:] = 0        # zero-ablate every step
            hidden_states.append(model.model.layers[-1].output[0])
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        per_step = glassbox.list().save()
        for step in tracer.iter[:3]:
            if step == 2:
                model.model.layers[0].output[0][:] = 0
            per_step.append(model.model.layers[-1].output[0])
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        with tracer.all():
            model.model.layers[0].output[:] = 0
            zeroed = model.model.layers[-1].output.save()
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        with tracer.iter[2]:
            model.model.layers[0].output[:] = 0
        with tracer.all():
            at_step_2 = model.model.layers[-1].output.save()
    for got, want in zip(hidden_states, zeroed):
        close(got, np.asarray(want)[0], 0)
    with model.generate(GEN_IDS, max_new_tokens=3) as tracer:
        with tracer.all():
            plain = model.model.layers[-1].output.save()
    for got, want in zip(per_step, at_step_2):
        close(got, np.asarray(want)[0], 0)
    close(per_step[0], np.asarray(plain[0])[0], 0)                  # steps 0, 1 untouched
    assert not np.allclose(per_step[2], np.asarray(plain[2])[0])    # step 2 ablated
    with model.trace(IDS):
        h = model.model.layers[1].output[0]               # a view, written through
        h[:, 3] = 1
        seen = h.save()
        out = model.model.layers[1].output.save()
    assert (np.asarray(out)[0, :, 3] == 1).all() and (np.asarray(seen)[:, 3] == 1).all()
    close(np.asarray(out)[0, :, :3], golden("model.layers.1.output")[0, :, :3])


def test_clone_before_modification_and_the_attention_tuple_rebuilt(model):
    # docs/usage/access-and-modify.md, "Cloning before modification" and "Tuple outputs"
    with model.trace(IDS):
        before = model.model.layers[0].output.clone().save()   # pre-mod
        model.model.layers[0].output[:] = 0
        after = model.model.layers[0].output.save()            # post-mod
    close(before, golden("model.layers.0.output"))
    assert (np.asarray(after) == 0).all()
    with model.trace(IDS):
        full = model.model.layers[0].self_attn.output    # tuple
        attn_out = full[0].save()                        # first element (tensor)
        model.model.layers[0].self_attn.output = (
            glassbox.zeros_like(attn_out),
        ) + model.model.layers[0].self_attn.output[1:]
        rebuilt = model.model.layers[1].output.save()
    with model.trace(IDS):
        model.model.layers[0].self_attn.output[0][:] = 0  # in place on the first element
        in_place = model.model.layers[1].output.save()
    close(attn_out, golden("model.layers.0.self_attn.output"))
    close(rebuilt, in_place, 0)
    assert not np.allclose(rebuilt, golden("model.layers.1.output"))


def test_grad_in_a_batched_invoke_and_one_backward_per_trace(model):
    # docs/usage/backward-and-grad.md, "Gradients inside a batched invoke"
    with model.trace() as tracer:
        with tracer.invoke(OTHER):
            model.output.logits.save()
        with tracer.invoke(IDS):
            hidden = model.model.layers[-1].output
            with model.output.logits.sum().backward():
                grad = hidden.grad.save()   # this invoke's rows only
    with model.trace(IDS):
        hidden = model.model.layers[-1].output
        with model.output.logits.sum().backward():
            alone = hidden.grad.save()
    close(grad, alone)
    # "Multiple backward passes": the service frees the graph after one backward
    with pytest.raises(TracingError, match="retain_graph=True has no equivalent"):
        with model.trace(IDS):
            hs = model.model.layers[-1].output
            logits = model.output.logits
            with logits.sum().backward(retain_graph=True):
                hs.grad.clone().save()
            with (logits.sum() * 2).backward():
                hs.grad.clone().save()


def test_generate_without_a_block_says_how_to_get_the_ids(model):
    # docs/usage/generate.md, "Called directly (no block)"
    ids = model.generate(GEN_IDS, max_new_tokens=3)
    with pytest.raises(AttributeError, match="run as `with` blocks"):
        ids.shape
    with pytest.raises(TracingError, match="run as `with` blocks"):
        ids[0]


def test_source_and_pipe_are_refused_saying_what_to_use(model):
    # docs/usage/source.md and pipe.md: Python inside modules cannot run on the service
    with pytest.raises(AttributeError, match="hook points instead"):
        with model.trace(IDS):
            model.model.layers[0].self_attn.source
    with pytest.raises(AttributeError, match="use model.generate"):
        model.pipe(max_new_tokens=3)
