"""The tracing API end to end through LocalBackend and the real engine, on the tiny random
Llama checkpoint (3 layers, no tokenizer: prompts are token ids) and one SmolLM2 check.

Numbers are compared with other values the engine computes in the same or another
request (the same point read two ways, a module run by hand, a patch that must restore the
clean run), never with stored constants. Skipped when build/bin/glassbox-engine (or
$GLASSBOX_ENGINE) is missing.
"""

import inspect

import numpy as np
import pytest

from glassbox.errors import GlassboxError

PROMPT = [1, 5, 9, 3]
OTHER = [1, 7, 2, 3]


def close(a, b, tol=1e-5):
    return np.allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_trace_and_save_logits_three_ways(tiny_model):
    model = tiny_model
    with model.trace(PROMPT):
        logits = model.lm_head.output.save()
        same = model.output.logits.save()
        final = model.model.norm.output
        by_hand = model.lm_head(final).save()
    assert logits.value.shape == (1, len(PROMPT), model.config["vocab_size"])
    assert close(logits, same) and close(logits, by_hand)


def test_zeroing_an_activation(tiny_model):
    model = tiny_model
    with model.trace(PROMPT):
        clean = model.lm_head.output.save()
    with model.trace(PROMPT):
        model.model.layers[1].mlp.output = 0
        mlp = model.model.layers[1].mlp.output.save()
        assigned = model.lm_head.output.save()
    with model.trace(PROMPT):
        model.model.layers[1].mlp.output[:] = 0
        sliced = model.lm_head.output.save()
    assert np.abs(mlp.value).max() == 0
    assert not close(assigned, clean)
    assert close(assigned, sliced)


def test_invokes_batch_equals_prompts_alone(tiny_model):
    model = tiny_model
    with model.trace() as tr:
        with tr.invoke(PROMPT):
            first = model.model.layers[2].output.save()
        with tr.invoke([4, 8]):
            second = model.model.layers[2].output.save()
        whole = model.model.layers[2].output.save()
    with model.trace([4, 8]):
        alone = model.model.layers[2].output.save()
    assert first.value.shape == (1, 4, 64) and second.value.shape == (1, 2, 64)
    assert whole.value.shape == (2, 4, 64)
    assert close(second, alone, 1e-4)
    assert close(whole.value[0], first.value[0])


def test_patching_across_a_session(tiny_model):
    model = tiny_model
    with model.session():
        with model.trace(PROMPT):
            clean_h = model.model.layers[0].output
            clean = model.lm_head.output.save()
        with model.trace(OTHER):
            corrupt = model.lm_head.output.save()
        with model.trace(OTHER):
            model.model.layers[0].output[:] = clean_h
            restored = model.lm_head.output.save()
        with model.trace(OTHER):
            model.model.layers[0].output[:, 1] = clean_h[:, 1]
            patched = model.lm_head.output.save()
    assert close(restored, clean, 1e-4)  # patching every position restores the clean run
    assert not close(patched, corrupt) and not close(patched, clean)


def test_generation_per_step(tiny_model):
    model = tiny_model
    steps = 3
    with model.generate(PROMPT, max_new_tokens=steps) as tr:
        with tr.all():
            every = model.lm_head.output.save()
        with tr.iter[1:3]:
            some = model.lm_head.output.save()
        tr.next()
        step1 = model.lm_head.output.save()
    assert len(every.value) == steps and len(some.value) == 2
    assert close(some.value[0], every.value[1]) and close(step1, every.value[1])
    greedy = [int(np.argmax(logits[0, -1])) for logits in every.value]
    assert tr.generated == [greedy]


def test_gradients_of_a_logit(tiny_model):
    model = tiny_model
    token = 5
    with model.trace(PROMPT):
        h = model.lm_head.input
        model.lm_head.output[0, -1, token].backward()
        grad = h.grad.save()
        last = h[:, -1].grad.save()
        weights = model.lm_head(np.eye(64, dtype=np.float32)[None]).save()  # W transposed
    # d logit[token] / d lm_head.input at the last position is lm_head's row for the token.
    assert close(grad.value[0, -1], weights.value[0, :, token])
    assert np.abs(grad.value[0, :-1]).max() == 0
    assert close(last, grad.value[:, -1])


def test_logit_lens(tiny_model):
    model = tiny_model
    with model.trace(PROMPT):
        lens = [model.lm_head(model.model.norm(layer.output))[0, -1].argmax(dim=-1).save()
                for layer in model.model.layers]
        top = model.lm_head.output[0, -1].argmax(dim=-1).save()
    assert len(lens) == 3
    assert int(lens[-1]) == int(top)  # the last layer's lens is the model's own prediction


def test_steering_a_generation(tiny_model):
    model = tiny_model
    with model.trace(PROMPT):
        direction = (model.model.layers[1].output[0, -1] * 4).save()
    with model.generate(PROMPT, max_new_tokens=3) as plain:
        with plain.all():
            before = model.model.layers[1].output.save()
            plain_logits = model.lm_head.output.save()
    with model.generate(PROMPT, max_new_tokens=3) as steered:
        with steered.all():
            model.model.layers[1].output += direction
            after = model.model.layers[1].output.save()
            steered_logits = model.lm_head.output.save()
    assert close(after.value[0], before.value[0] + direction.value)
    assert not close(steered_logits.value[0], plain_logits.value[0])


def test_skip_a_layer(tiny_model):
    model = tiny_model
    with model.trace(PROMPT):
        entering = model.model.layers[1].input.save()
        model.model.layers[1].skip(entering)
        leaving = model.model.layers[1].output.save()
    assert close(leaving, entering)


def test_cache(tiny_model):
    model = tiny_model
    with model.trace(PROMPT) as tr:
        cache = tr.cache("hook_resid_post")
        direct = model.model.layers[2].output.save()
    assert sorted(cache) == [f"model.layers.{n}.output" for n in range(3)]
    assert close(cache["blocks.2.hook_resid_post"], direct)


def test_attention_pattern_rows_sum_to_one(tiny_model):
    model = tiny_model
    with model.trace(PROMPT):
        pattern = model.model.layers[0].self_attn.attn_pattern.save()
        totals = model.blocks[0].attn.hook_pattern.sum(dim=-1).save()
    assert pattern.value.shape == (1, 4, 4, 4)
    assert close(totals, np.ones((1, 4, 4)))


def test_edit_is_carried_until_cleared(tiny_model):
    model = tiny_model
    with model.edit() as edited:
        model.model.layers[0].mlp.output = 0
    with edited.trace(PROMPT):
        zeroed = model.model.layers[0].mlp.output.save()
    with model.trace(PROMPT):
        untouched = model.model.layers[0].mlp.output.save()
    assert np.abs(zeroed.value).max() == 0 and np.abs(untouched.value).max() > 0
    edited.clear_edits()
    with edited.trace(PROMPT):
        cleared = model.model.layers[0].mlp.output.save()
    assert close(cleared, untouched)


def test_service_errors_point_at_the_users_line(tiny_model):
    model = tiny_model
    with pytest.raises(GlassboxError) as e:
        with model.trace(PROMPT):
            h = model.model.layers[0].output
            where = inspect.currentframe().f_lineno + 1
            (h @ h).save()
    assert e.value.code == "INVALID_ARGUMENT"
    assert e.value.source == f"test_local_backend.py:{where}"
    assert e.value.node is not None and "matmul" in e.value.message


def test_smollm2_completes_a_text_prompt(smollm2):
    with smollm2.trace("The capital of France is"):
        top = smollm2.lm_head.output[0, -1].argmax(dim=-1).save()
        lens = smollm2.lm_head(smollm2.model.norm(smollm2.model.layers[-1].output))[0, -1].save()
    assert int(top) == int(np.argmax(lens.value))


def test_scan_reports_the_shapes_a_real_run_has(tiny_model):
    def experiment(run):
        with run() as tr:
            with tr.invoke([1, 5, 9, 3]):
                h = tiny_model.model.layers[1].output.save()
                z = tiny_model.model.layers[0].self_attn.z[:, -1].save()
            with tr.invoke([7, 2]):
                top = tiny_model.lm_head.output[0, -1].argmax().save()
        return h, z, top

    real = experiment(tiny_model.trace)
    scanned = experiment(tiny_model.scan)
    for r, s in zip(real, scanned):
        assert tuple(s.shape) == tuple(np.asarray(r.value).shape)
        assert str(s.dtype) == str(np.asarray(r.value).dtype)
    with pytest.raises(Exception, match="scan reports shapes"):
        np.asarray(scanned[0].value)
