"""Cross-user batching through the real service: one `glassbox-engine serve --batch-slots 4`
process takes four users' jobs at once (four links to the broker), runs them in one batch
(the forwards in one engine pass, which the jobs' statuses report) and gives every job what
the engine gives it alone (the local backend runs each job in a process of its own)."""

import time

import numpy as np
import pytest

import glassbox
from glassbox import launcher
from glassbox.service import ServiceBackend

from conftest import TINY_LLAMA
from test_service import (NAME, OTHER, PROMPT, binaries, data_dir, local,  # noqa: F401
                          monkeypatch_module, wait_for_model, wait_for_state)

SLOTS = 4


@pytest.fixture(scope="module")
def batching_service(binaries, data_dir):  # noqa: F811
    params = launcher.ServiceParams(
        model_path=str(TINY_LLAMA),
        model_name=NAME, port=launcher.free_port(), worker_port=launcher.free_port(),
        data_dir=str(data_dir / "batching"), dev=True,
        engine_args=("--threads", "1", "--batch-slots", str(SLOTS),
                     "--hold-file", str(data_dir / "hold")))
    with launcher.LocalService(params) as running:
        backend = ServiceBackend(running.params.url, quiet=True)
        wait_for_model(backend, NAME)
        yield backend
        backend.close()


def wait_for_held(hold, count, timeout):
    """Until the worker's batcher says (beside its hold file) that `count` jobs are with it."""
    waiting = hold.with_name(hold.name + ".waiting")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if waiting.exists() and waiting.read_text() == str(count):
            return
        time.sleep(0.01)
    raise AssertionError(f"the worker holds {waiting.read_text() if waiting.exists() else 'no'} jobs, "
                         f"not {count}")


def lens(model, **wait):
    with model.trace(PROMPT, **wait) as tr:
        out = model.lm_head(model.model.norm(model.model.layers[0].output[:, -1])).save()
    return tr, [out]


def patching(model, **wait):
    with model.trace(**wait) as tr:
        with tr.invoke(PROMPT):
            clean = model.model.layers[1].output[:, -1]
        with tr.invoke(OTHER[:3]):
            model.model.layers[1].output[:, -1] = clean
            out = model.lm_head.output.save()
    return tr, [out]


def short_prompt_ablation(model, **wait):
    """A short prompt (left-padded in the batch) and a whole-batch write and read."""
    with model.trace([1, 3], **wait) as tr:
        model.model.layers[0].mlp.output[:] = 0
        whole = model.model.layers[1].output.save()
    return tr, [whole]


def steering(model, **wait):
    with model.generate(PROMPT, max_new_tokens=4, **wait) as tr:
        with tr.all():
            model.model.layers[0].output[:] += 0.5
            logits = model.lm_head.output.save()
    return tr, [logits]


EXPERIMENTS = [lens, patching, short_prompt_ablation, steering]


def close(batched, alone):
    batched, alone = np.asarray(batched, dtype=np.float64), np.asarray(alone, dtype=np.float64)
    assert batched.shape == alone.shape
    scale = max(1.0, float(np.abs(alone).max()))
    assert float(np.abs(batched - alone).max()) <= 1e-4 * scale


def test_four_users_jobs_run_at_once_on_one_worker_and_each_equals_its_solo_run(batching_service, local,  # noqa: F811
                                                                                 data_dir):  # noqa: F811
    # One worker process, four batch slots.
    assert [(m.workers, m.slots) for m in batching_service.models() if m.name == NAME] == [(1, SLOTS)]
    remote = glassbox.Model(NAME, backend=batching_service, arrays="numpy")
    hold = data_dir / "hold"
    hold.touch()
    try:
        runs = [experiment(remote, blocking=False) for experiment in EXPERIMENTS]
        # All four are with the one worker process at once: it took one job per slot.
        for tr, _ in runs:
            wait_for_state(batching_service, tr.job_id, {"RUNNING"}, timeout=60)
        assert [m.running for m in batching_service.models() if m.name == NAME] == [SLOTS]
        # RUNNING is the broker's word at hand-over; release only once the worker's batcher
        # holds all four, so they make one batch.
        wait_for_held(hold, SLOTS, timeout=60)
    finally:
        hold.unlink()
    for tr, _ in runs:
        tr.result(timeout=120)
    # The three forwards shared one pass; the generation had its own (nothing to report).
    # The worker said so, and the broker passed it on in the job's statuses.
    assert [tr.future.status().batch for tr, _ in runs] == [3, 3, 3, None]
    for (tr, saved), experiment in zip(runs, EXPERIMENTS):
        solo_tr, solo_saved = experiment(local)
        assert getattr(tr, "generated", None) == getattr(solo_tr, "generated", None)
        for batched, alone in zip(saved, solo_saved):
            if isinstance(alone.value, list):
                assert len(batched.value) == len(alone.value)
                for b, a in zip(batched.value, alone.value):
                    close(b, a)
            else:
                close(batched.value, alone.value)


def test_a_cancelled_job_leaves_the_batch_and_the_others_complete(batching_service, data_dir):  # noqa: F811
    remote = glassbox.Model(NAME, backend=batching_service, arrays="numpy")
    hold = data_dir / "hold"
    hold.touch()
    try:
        runs = [lens(remote, blocking=False), steering(remote, blocking=False)]
        for tr, _ in runs:
            wait_for_state(batching_service, tr.job_id, {"RUNNING"}, timeout=60)
        batching_service.cancel(runs[0][0].job_id)
        wait_for_state(batching_service, runs[0][0].job_id, {"CANCELLED"}, timeout=60)
    finally:
        hold.unlink()
    runs[1][0].result(timeout=120)
    assert len(runs[1][1][0].value) == 4  # the generation's logits, one per step
    _, saved = lens(remote)  # and the worker still serves
    assert saved[0].value.shape[-1] == 128
