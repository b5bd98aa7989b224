"""Graph building without a server: the request each form of the tracing API sends (ops,
arguments, refs, invokes, steps, sessions, edits, source lines), the module tree, how
results reach proxies, and the errors raised at once for what a graph cannot express.

Run from the repository root: .venv/bin/python -m pytest tests/python -q
"""

import inspect

import numpy as np
import pytest

import glassbox
from glassbox import wire
from glassbox.backends import error_from_engine_stderr
from glassbox.errors import GlassboxError, TracingError

from conftest import FakeBackend

Ref = wire.Ref
ALL = slice(None)
HERE = "test_tracing.py"


def line() -> str:
    """``test_tracing.py:N`` for the caller's line."""
    return f"{HERE}:{inspect.currentframe().f_back.f_lineno}"


def ops(request, trace=0):
    return [n.op for n in request.traces[trace].nodes]


def node(request, op, trace=0, nth=0):
    return [n for n in request.traces[trace].nodes if n.op == op][nth]


# The module tree -----------------------------------------------------------------------------


def test_module_tree_mirrors_the_catalogue(model):
    assert len(model.model.layers) == 3
    assert "layers" in dir(model.model)
    assert {"input", "output", "q", "z", "attn_pattern", "q_proj"} <= set(
        dir(model.model.layers[1].self_attn))
    assert {"trace", "generate", "session", "edit", "lm_head", "model"} <= set(dir(model))
    assert model.model.layers[-1]._module_path == "model.layers.2"
    assert [m._module_path for m in model.model.layers[1:]] == ["model.layers.1", "model.layers.2"]
    assert "model.layers.1.mlp" in repr(model.model.layers[1].mlp)


def test_unknown_names_suggest_close_ones(model):
    with pytest.raises(AttributeError, match="did you mean mlp"):
        model.model.layers[0].mpl
    with pytest.raises(IndexError, match="has 3 modules"):
        model.model.layers[3]


def test_transformerlens_aliases_read_the_canonical_point(model, fake):
    with model.trace("hi"):
        model.blocks[1].attn.hook_z.save()
        model.hook_embed.save()
    reads = [n.kwargs["point"] for n in fake.last.traces[0].nodes if n.op == "read"]
    assert reads == ["model.layers.1.self_attn.z", "model.embed_tokens.output"]


# Each family's own module behind a TransformerLens name: (ln_final, unembed, blocks.1.mlp,
# blocks.1.ln1, blocks.1.ln2), then (blocks.1.attn, blocks.1.mlp, blocks.2) for skip().
FAMILY_MODULES = {
    "llama": (["model.norm", "lm_head", "model.layers.1.mlp", "model.layers.1.input_layernorm",
               "model.layers.1.post_attention_layernorm"],
              ["model.layers.1.self_attn", "model.layers.1.mlp", "model.layers.2"]),
    "gpt2": (["transformer.ln_f", "lm_head", "transformer.h.1.mlp", "transformer.h.1.ln_1",
              "transformer.h.1.ln_2"],
             ["transformer.h.1.attn", "transformer.h.1.mlp", "transformer.h.2"]),
    "neox": (["gpt_neox.final_layer_norm", "embed_out", "gpt_neox.layers.1.mlp",
              "gpt_neox.layers.1.input_layernorm", "gpt_neox.layers.1.post_attention_layernorm"],
             ["gpt_neox.layers.1.attention", "gpt_neox.layers.1.mlp", "gpt_neox.layers.2"]),
}


@pytest.mark.parametrize("family", FAMILY_MODULES)
def test_transformerlens_modules_call_and_skip_the_familys_own(family):
    fake = FakeBackend(family=family)
    model = glassbox.Model(family, backend=fake, arrays="numpy")
    with model.trace("x"):
        h = model.blocks[1].hook_resid_post
        model.unembed(model.ln_final(h))
        model.blocks[1].mlp(h), model.blocks[1].ln1(h), model.blocks[1].ln2(h)
        model.blocks[1].attn.skip(h)
        model.blocks[1].mlp.skip(h)
        model.blocks[2].skip(h)
        model.output.logits.save()
    nodes = fake.last.traces[0].nodes
    called, skipped = FAMILY_MODULES[family]
    assert [n.kwargs["name"] for n in nodes if n.op == "module"] == called
    assert [n.kwargs["module"] for n in nodes if n.op == "skip"] == skipped
    assert node(fake.last, "read", nth=1).kwargs["point"] == f"{called[1]}.output"
    assert f"blocks.1.mlp ({called[2]})" in repr(model.blocks[1].mlp)


def test_a_module_that_resolves_to_nothing_names_what_can_be_called():
    model = glassbox.Model("gpt2", backend=FakeBackend(family="gpt2"), arrays="numpy")
    with model.trace("x"):
        h = model.blocks[1].hook_resid_post
        with pytest.raises(TracingError, match=r"blocks is not a module that can be called: "
                           r"call a Hugging Face module \(e\.g\. lm_head\) or one of "
                           r"blocks\.N\.ln1, blocks\.N\.attn, blocks\.N\.ln2, "
                           r"blocks\.N\.mlp, ln_final, unembed$"):
            model.blocks(h)
        with pytest.raises(TracingError, match="transformer is not a module"):
            model.transformer(h)
        with pytest.raises(TracingError, match=r"blocks\.1\.ln1 cannot be skipped: only a "
                           r"layer, its attention or its MLP can \(transformer\.h\.0\.attn, "
                           r"transformer\.h\.0\.mlp, transformer\.h\.0, \.\.\.; or "
                           r"blocks\.N, blocks\.N\.attn, blocks\.N\.mlp\)"):
            model.blocks[1].ln1.skip(h)
    assert ops(model._backend.last) == ["read"]

def test_hook_points_need_a_trace(model):
    with pytest.raises(TracingError, match="only available inside `with model.trace") as e:
        model.model.layers[0].output
    assert e.value.source.endswith(f"{HERE}:{inspect.currentframe().f_lineno - 1}")


# Trace, save, operators and methods ----------------------------------------------------------


def test_trace_and_save(model, fake):
    with model.trace("The capital of France is"):
        hidden = model.model.layers[1].output.save(); where = line()  # noqa: E702
    request = fake.last
    assert request.model == "fake" and not request.scan
    assert request.traces[0].invokes == [wire.Invoke(prompt="The capital of France is")]
    read, save = request.traces[0].nodes
    assert (read.op, read.args, read.kwargs) == ("read", [], {"point": "model.layers.1.output",
                                                               "invoke": 0})
    assert (save.op, save.args) == ("save", [Ref(read.id)])
    assert read.source == save.source == where
    assert hidden.value.shape == (1, 2)


def test_named_save(model, fake):
    with model.trace("x"):
        model.lm_head.output.save("logits")
    assert node(fake.last, "save").kwargs == {"name": "logits"}


def test_python_operators(model, fake):
    with model.trace("x"):
        h = model.model.layers[0].output
        (h + 1, 2 - h, h * h, h / 2, h ** 2, h @ h, -h, abs(h), h == 0, h != 0, h < 0, h <= 0,
         h > 0, h >= 0, (h > 0) & (h < 1), (h > 0) | (h < 1), ~(h > 0))
    assert ops(fake.last)[1:] == [
        "add", "sub", "mul", "div", "pow", "matmul", "neg", "abs", "eq", "ne", "lt", "le", "gt",
        "ge", "gt", "lt", "logical_and", "gt", "lt", "logical_or", "gt", "logical_not"]
    nodes = fake.last.traces[0].nodes
    assert nodes[1].args == [Ref(0), 1] and nodes[2].args == [2, Ref(0)]


def test_tensor_methods_map_to_whitelisted_ops(model, fake):
    with model.trace("x"):
        h = model.model.layers[0].output
        h.sum(dim=-1)
        h.mean(1, keepdim=True)
        h.softmax(-1)
        h.argmax(dim=-1)
        values, indices = h.topk(5, dim=-1)
        h.reshape(2, -1)
        h.transpose(0, 1)
        h.permute(2, 0, 1)
        h.to("float16")
        h.float()
        h.cpu()
        h.norm(dim=-1)
    nodes = fake.last.traces[0].nodes
    got = [(n.op, n.args[1:], n.kwargs) for n in nodes[1:]]
    assert got == [
        ("sum", [], {"dim": -1}),
        ("mean", [], {"dim": 1, "keepdim": True}),
        ("softmax", [-1], {}),
        ("argmax", [], {"dim": -1}),
        ("topk", [5], {"dim": -1}),
        ("getitem", [0], {}),
        ("getitem", [1], {}),
        ("reshape", [[2, -1]], {}),
        ("transpose", [0, 1], {}),
        ("permute", [[2, 0, 1]], {}),
        ("to", ["float16"], {}),
        ("to", ["float32"], {}),
        ("norm", [], {"dim": -1}),
    ]


def test_functions_record_ops(model, fake):
    with model.trace("x"):
        h = model.model.layers[0].output
        glassbox.cat([h, h], dim=1)
        glassbox.where(h > 0, h, 0.0)
        glassbox.einsum("bsd,bsd->bs", h, h)
        glassbox.zeros([2, 3])
        glassbox.arange(4)
    nodes = fake.last.traces[0].nodes
    assert [n.op for n in nodes] == ["read", "cat", "gt", "where", "einsum", "zeros", "arange"]
    assert nodes[1].args == [[Ref(0), Ref(0)]] and nodes[1].kwargs == {"dim": 1}
    assert nodes[4].args == ["bsd,bsd->bs", Ref(0), Ref(0)]


def test_numpy_ufuncs_on_traced_values_become_ops(model, fake):
    with model.trace("x"):
        h = model.model.layers[0].output
        np.exp(h)
        np.float32(2.0) * h
    assert ops(fake.last) == ["read", "exp", "mul"]


def test_arrays_travel_as_tensors(model, fake):
    with model.trace("x"):
        h = model.model.layers[0].output
        h + np.ones(8)  # float64 is sent as float32
    value = node(fake.last, "add").args[1]
    assert value.dtype == np.float32 and value.shape == (8,)


# Writing ---------------------------------------------------------------------------------------


def test_slice_assignment_on_a_hook_point_writes_with_an_index(model, fake):
    with model.trace("x"):
        h = model.model.layers[0].output
        h[:, -1, :] = 0
        after = h * 1
    read, write, reread, mul = fake.last.traces[0].nodes
    assert write.op == "write" and write.args == [0]
    assert write.kwargs == {"point": "model.layers.0.output", "invoke": 0, "index": [ALL, -1, ALL]}
    assert reread.op == "read" and reread.kwargs == read.kwargs
    assert mul.args == [Ref(reread.id), 1]  # h now stands for the value after the write
    assert after is not h


def test_reads_of_one_point_share_a_proxy(model, fake):
    with model.trace("x"):
        saved = model.model.layers[0].output.save()
        model.model.layers[0].output[:, 0] = 1
    nodes = fake.last.traces[0].nodes
    assert [n.op for n in nodes] == ["read", "write", "read", "save"]
    assert nodes[3].args == [Ref(nodes[2].id)]  # saved after the change, as in-place in torch
    assert saved._id == nodes[2].id


def test_slice_assignment_on_other_values_is_a_setitem(model, fake):
    with model.trace("x"):
        h = model.model.layers[0].output * 2
        h[0] = 1
        h.save()
    assert ops(fake.last) == ["read", "mul", "setitem", "save"]
    setitem = node(fake.last, "setitem")
    assert setitem.args == [Ref(1), 0, 1]


def test_assigning_into_an_index_of_a_hook_value_joins_int_indexes_or_is_refused(model, fake):
    with pytest.raises(TracingError, match="index the hook point once"):
        with model.trace("x"):
            h = model.model.layers[0].output[:, 1:]
            h[0] = 0
    with model.trace("x"):  # nnsight's `output[0][:, 3] = 0`: exactly output[0, :, 3] = 0
        h = model.model.layers[0].output[0]
        h[:, 3] = 0
    write = node(fake.last, "write")
    assert write.args == [0]
    assert write.kwargs == {"point": "model.layers.0.output", "invoke": 0,
                            "index": [0, slice(None), 3]}


def test_module_assignment_writes(model, fake):
    with model.trace("x"):
        model.model.layers[2].mlp.output = 0
        model.model.layers[1].input = model.model.layers[0].output * 2
    nodes = fake.last.traces[0].nodes
    assert (nodes[0].op, nodes[0].args, nodes[0].kwargs) == (
        "write", [0], {"point": "model.layers.2.mlp.output", "invoke": 0})
    assert nodes[-1].op == "write" and nodes[-1].args == [Ref(nodes[-2].id)]
    assert nodes[-1].kwargs["point"] == "model.layers.1.input"


def test_in_place_add_on_a_module_output_writes_once(model, fake):
    steer = np.ones(8, np.float32)
    with model.trace("x"):
        model.model.layers[1].output += steer
        model.model.layers[1].output[:] += steer
    assert ops(fake.last) == ["read", "add", "write", "read", "getitem", "add", "write", "read"]
    assert node(fake.last, "write", nth=1).kwargs["index"] == ALL


def test_calling_a_module_and_skipping_one(model, fake):
    with model.trace("x"):
        h = model.model.layers[1].output
        model.lm_head(model.model.norm(h))
        model.model.layers[2].skip(h)
    nodes = fake.last.traces[0].nodes
    assert [(n.op, n.kwargs) for n in nodes[1:]] == [
        ("module", {"name": "model.norm"}), ("module", {"name": "lm_head"}),
        ("skip", {"module": "model.layers.2"})]


# Invokes, generation steps, sessions, edits --------------------------------------------------


def test_invokes_batch_prompts(model, fake):
    with model.trace() as tr:
        with tr.invoke("first"):
            model.lm_head.output.save()
        with tr.invoke([5, 6, 7]):
            model.lm_head.output.save()
        model.lm_head.output.save()
    trace = fake.last.traces[0]
    assert trace.invokes == [wire.Invoke(prompt="first"), wire.Invoke(ids=[5, 6, 7])]
    reads = [n.kwargs for n in trace.nodes if n.op == "read"]
    assert [r.get("invoke") for r in reads] == [0, 1, None]


def test_a_list_of_prompts_is_a_batch_read_whole(model, fake):
    with model.trace(["a", "b"]):
        model.lm_head.output.save()
    assert len(fake.last.traces[0].invokes) == 2
    assert "invoke" not in node(fake.last, "read").kwargs


def test_generation_steps(model, fake):
    with model.generate("x", max_new_tokens=4, temperature=0.5, seed=3) as tr:
        with tr.all():
            model.lm_head.output.save()
        with tr.iter[1:3]:
            model.lm_head.output.save()
        for step in tr.iter[2:4]:
            model.model.layers[0].output.save()
        model.lm_head.output.save()
        tr.next()
        model.lm_head.output.save()
    trace = fake.last.traces[0]
    assert trace.generate == wire.GenerateOptions(4, 0.5, 0, 1.0, 3, [])
    steps = [n.kwargs.get("step", 0) for n in trace.nodes if n.op == "read"]
    assert steps == ["all", [1, 3], 2, 3, 0, 1]


def test_steps_need_generation_and_stay_in_range(model):
    with pytest.raises(TracingError, match="only in model.generate"):
        with model.trace("x") as tr:
            tr.all()
    with pytest.raises(TracingError, match="outside this generation's 2 steps"):
        with model.generate("x", max_new_tokens=2) as tr:
            tr.iter[2]


def test_session_is_one_request_with_refs_across_traces(model, fake):
    with model.session():
        with model.trace("clean"):
            clean = model.model.layers[1].output
        with model.trace("corrupt"):
            model.model.layers[1].output[:, 2] = clean[:, 2]
            model.lm_head.output.save()
    assert len(fake.requests) == 1
    first, second = fake.last.traces
    ids = [n.id for n in first.nodes] + [n.id for n in second.nodes]
    assert ids == sorted(set(ids))  # unique across the request
    getitem = node(fake.last, "getitem", trace=1)
    assert getitem.args[0] == Ref(first.nodes[0].id)


def test_values_of_another_unsent_request_are_refused(model):
    with model.session():
        with model.trace("a"):
            pass
        with pytest.raises(TracingError, match="needs a trace"):
            model.model.layers[0].output


def test_edit_nodes_are_prepended_to_later_traces(model, fake):
    with model.edit() as edited:
        model.model.layers[0].mlp.output = 0
    with edited.trace("x"):
        model.lm_head.output.save()
    nodes = fake.last.traces[0].nodes
    assert [n.op for n in nodes] == ["write", "read", "save"]
    assert nodes[0].kwargs == {"point": "model.layers.0.mlp.output"}
    with model.trace("x"):  # the original model carries no edit
        model.lm_head.output.save()
    assert ops(fake.last) == ["read", "save"]
    with edited.generate("x", max_new_tokens=3):
        pass
    assert "step" not in node(fake.last, "write").kwargs  # a plain edit: the first step only


def test_an_edit_under_iter_or_all_applies_at_every_generation_step(model, fake):
    # nnsight 0.8 (docs/usage/edit.md): a plain edit applies at the first occurrence; under
    # the edit tracer's iter it applies at every step of a generation.
    with model.edit() as (tracer, edited):
        for _ in tracer.iter[:]:
            model.model.layers[0].mlp.output = 0
        with tracer.all():
            model.model.layers[1].mlp.output = 0
        model.model.layers[2].mlp.output = 0
    with edited.generate("x", max_new_tokens=3):
        pass
    steps = {n.kwargs["point"]: n.kwargs.get("step", 0) for n in fake.last.traces[0].nodes
             if n.op == "write"}
    assert steps == {"model.layers.0.mlp.output": "all", "model.layers.1.mlp.output": "all",
                     "model.layers.2.mlp.output": 0}
    with edited.trace("x"):  # one pass: every access of the edit applies to it
        pass
    assert all("step" not in n.kwargs for n in fake.last.traces[0].nodes)
    with model.edit() as (tracer, _):
        with pytest.raises(TracingError, match="tracer.iter\\[:\\]"):
            tracer.iter[1:3]
        with pytest.raises(TracingError, match="first step"):
            tracer.next()


def test_a_skip_in_a_plain_edit_is_refused_in_a_generation(model, fake):
    with model.edit() as (tracer, edited):
        model.model.layers[1].skip(model.model.layers[1].input)
    with pytest.raises(TracingError, match="under `for _ in tracer.iter"):
        with edited.generate("x", max_new_tokens=3):
            pass
    with model.edit() as (tracer, edited):
        with tracer.all():
            model.model.layers[1].skip(model.model.layers[1].input)
    with edited.generate("x", max_new_tokens=3):
        pass
    assert node(fake.last, "skip").kwargs["step"] == "all"


def test_inplace_edit_until_cleared(model, fake):
    with model.edit(inplace=True) as tracer:  # nnsight 0.8 binds the edit's tracer
        assert tracer.iter is not None and tracer is not model
        h = model.model.layers[0].output
        model.model.layers[0].output = h * 0.5
    with model.trace("x"):
        pass
    assert ops(fake.last) == ["read", "mul", "write"]
    model.clear_edits()
    with model.trace("x"):
        pass
    assert ops(fake.last) == []


# Gradients, cache, scan ----------------------------------------------------------------------


def test_backward_then_grad(model, fake):
    with model.trace("x"):
        h = model.model.layers[1].output
        loss = model.lm_head.output[0, -1, 3]
        loss.backward()
        h.grad.save()
        h[:, -1].grad.save()
    nodes = {n.op: n for n in fake.last.traces[0].nodes}
    backward = node(fake.last, "backward")
    grads = [n for n in fake.last.traces[0].nodes if n.op == "grad"]
    assert [g.args for g in grads] == [[Ref(backward.id)], [Ref(backward.id)]]
    assert grads[0].kwargs == {"point": "model.layers.1.output", "invoke": 0}
    assert "getitem" in nodes


def test_grad_needs_a_backward_and_a_hook_value(model):
    with pytest.raises(TracingError, match="needs a .backward()"):
        with model.trace("x"):
            model.model.layers[1].output.grad
    with pytest.raises(TracingError, match="hook point"):
        with model.trace("x"):
            h = model.model.layers[1].output * 2
            h.sum().backward()
            h.grad


def test_cache_sends_a_cache_node_and_collects_by_point(model, fake):
    def answer(request):
        cache = node(request, "cache")
        return wire.Result(saved=[
            wire.SavedValue("model.layers.0.output", cache.id, np.ones((1, 2, 8), np.float32))])

    fake.answer = answer
    with model.trace("x") as tr:
        cache = tr.cache("output")
    assert node(fake.last, "cache").kwargs == {"filter": "output", "invoke": 0}
    assert cache["model.layers.0.output"].shape == (1, 2, 8)
    assert cache["blocks.0.hook_resid_post"] is cache["model.layers.0.output"]
    assert list(cache) == ["model.layers.0.output"]


def test_scan_sets_the_flag_and_fills_shapes_when_reported(model, fake):
    class ShapedResult(wire.Result):
        pass

    def answer(request):
        result = ShapedResult()
        result.shapes = [{"node": 0, "dtype": "float32", "shape": [1, 2, 8]}]
        return result

    fake.answer = answer
    with model.scan("x"):
        h = model.model.layers[0].output
        doubled = h * 2
    assert fake.last.scan
    assert h.shape == (1, 2, 8) and h.dtype == "float32"
    with pytest.raises(TracingError, match="scan reports shapes"):
        doubled.shape
    fake.answer = None
    with model.trace("x") as tr:
        tr.scan()
        h = model.model.layers[0].output
    assert fake.last.scan
    with pytest.raises(TracingError, match="scan reports shapes"):
        h.shape  # the engine reported no shapes


# Results -------------------------------------------------------------------------------------


def test_saved_values_behave_like_their_arrays(model, fake):
    fake.answer = lambda request: wire.Result(saved=[wire.SavedValue(
        "node_1", node(request, "save").id, np.arange(6, dtype=np.float32).reshape(2, 3))])
    with model.trace("x"):
        h = model.lm_head.output.save()
    assert isinstance(h.value, np.ndarray)
    assert np.array_equal(np.asarray(h), h.value)
    assert h.shape == (2, 3) and float(h[1, 2]) == 5.0
    assert np.array_equal(h + 1, h.value + 1)
    assert np.array_equal(h.sum(dim=-1), [3.0, 12.0])
    assert int(h.argmax()) == 5 and len(h) == 2


def test_per_step_values_and_bfloat16(model, fake):
    bf16 = wire.BFloat16Array.from_float32(np.array([1.5], np.float32))
    fake.answer = lambda request: wire.Result(
        saved=[wire.SavedValue("s", node(request, "save").id, [bf16, bf16])], generated=[[4, 2]])
    with model.generate("x", max_new_tokens=2) as tr:
        with tr.all():
            per_step = model.lm_head.output.save()
    assert tr.generated == [[4, 2]]
    assert [v.tolist() for v in per_step.value] == [[1.5], [1.5]]


def test_values_exist_only_after_the_block_and_if_saved(model):
    with model.trace("x"):
        h = model.lm_head.output
        with pytest.raises(TracingError, match="once the `with` block"):
            h.value
    with pytest.raises(TracingError, match="was not saved"):
        h.value


# Errors raised at once -----------------------------------------------------------------------


@pytest.mark.parametrize("misuse, message", [
    (lambda h: np.linalg.norm(h), "numpy.norm cannot run"),
    (lambda h: len(h), r"len\(\) of a traced value"),
    (lambda h: bool(h.sum() > 0), r"bool\(\) of a traced value"),
    (lambda h: list(h), "iterating over a traced value"),
    (lambda h: int(h.sum()), r"int\(\) of a traced value"),
    (lambda h: h.frobnicate(), "`.frobnicate` is not an operation"),
    (lambda h: h // 2, "operator `floordiv`"),
    (lambda h: h + {"a": 1}, "a dict cannot travel"),
    (lambda h: h.sum(axis=1), "sum has no argument 'axis'"),
    (lambda h: h[: h.sum()], "slice bounds must be Python ints"),
])
def test_what_graphs_cannot_express_raises_at_the_users_line(model, fake, misuse, message):
    with pytest.raises(TracingError, match=message) as e:
        with model.trace("x"):
            misuse(model.model.layers[0].output)
    assert e.value.source.split("/")[-1].startswith(f"{HERE}:")
    assert fake.requests == []  # nothing was sent


def test_traces_do_not_nest(model):
    with pytest.raises(TracingError, match="do not nest"):
        with model.trace("a"):
            with model.trace("b"):
                pass


def test_values_of_another_request_must_be_saved(model):
    with model.trace("a"):
        h = model.model.layers[0].output
    with pytest.raises(TracingError, match="was not saved"):
        with model.trace("b"):
            model.model.layers[0].output = h


def test_saved_values_of_earlier_requests_travel_as_tensors(model, fake):
    with model.trace("a"):
        h = model.model.layers[0].output.save()
    with model.trace("b"):
        model.model.layers[0].output = h
    value = node(fake.last, "write").args[0]
    assert isinstance(value, np.ndarray) and value.shape == (1, 2)


def test_service_errors_name_node_and_source():
    error = error_from_engine_stderr(
        "loading m ... done\nerror: INVALID_ARGUMENT: trace 0: at hook point lm_head.output: "
        "node 4 (exp.py:12), op matmul: shapes do not match\n")
    assert (error.code, error.node, error.source) == ("INVALID_ARGUMENT", 4, "exp.py:12")
    assert "exp.py:12" in str(error) and "shapes do not match" in str(error)
    several = error_from_engine_stderr("error: INVALID_ARGUMENT: 2 problem(s):\n  node 1 (a.py:1): x"
                                       "\n  node 2 (a.py:2): y")
    assert several.node is None and "node 2 (a.py:2)" in several.message
    assert error_from_engine_stderr("segfault").code == "INTERNAL"


def test_model_takes_a_backend_or_a_url_not_both(fake):
    with pytest.raises(GlassboxError, match="either backend"):
        glassbox.Model("fake", backend=fake, url="tcp://127.0.0.1:9")


def test_error_reports_become_glassbox_errors():
    report = wire.ErrorReport("NOT_FOUND", "no such model", node=3, source="exp.py:7")
    error = GlassboxError.from_report(report)
    assert (error.code, error.node, error.source) == ("NOT_FOUND", 3, "exp.py:7")


def test_torch_functions_map_to_glassbox_functions():
    from glassbox.proxy import torch_op_name

    def named(name):
        return type("F", (), {"__name__": name})()

    assert torch_op_name(named("softmax")) == ("softmax", False)
    assert torch_op_name(named("__radd__")) == ("add", True)
    assert torch_op_name(named("__truediv__")) == ("div", False)
    assert torch_op_name(named("concat")) == ("cat", False)


def test_a_write_at_every_step_refreshes_reads_of_one_step(model, fake):
    with model.generate("a", max_new_tokens=3) as tr:
        first = model.model.layers[0].output
        with tr.all():
            model.model.layers[0].output[:] = 0
        again = model.model.layers[0].output
    assert first is not again
    assert ops(fake.last) == ["read", "read", "write", "read", "read"]


def test_only_layers_attention_and_mlps_can_be_skipped(model, fake):
    with model.trace("x"):
        model.model.layers[0].self_attn.skip(0)
        model.model.layers[0].mlp.skip(0)
        with pytest.raises(TracingError, match="cannot be skipped"):
            model.model.norm.skip(0)
    assert [n.kwargs["module"] for n in fake.last.traces[0].nodes] == [
        "model.layers.0.self_attn", "model.layers.0.mlp"]


def test_results_become_torch_tensors_when_asked(monkeypatch):
    import sys
    import types

    from glassbox.results import to_user_value

    fake_torch = types.SimpleNamespace(from_numpy=lambda a: ("tensor", a.shape), bfloat16="bf16")
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    assert to_user_value(np.zeros((2, 3), np.float32), "torch") == ("tensor", (2, 3))
    assert to_user_value([np.zeros(1, np.float32)], "torch") == [("tensor", (1,))]
    assert to_user_value(7, "torch") == 7


def test_local_backend_needs_the_engine(tmp_path):
    with pytest.raises(GlassboxError, match="no glassbox-engine binary") as e:
        glassbox.LocalBackend("model.gguf", engine=str(tmp_path / "missing"))
    assert e.value.code == "NOT_FOUND"
