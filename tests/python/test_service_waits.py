"""Waiting on the service without a floor (issue 14): a finished job wakes whoever waits
for it (a blocking run, a future, run_all) at once, not at the next tick of a poll
interval; tokenizer requests and the catalogue are answered while the model's only worker
is busy with another job. Real redis-server, glassbox-broker and `glassbox-engine serve`
processes on SmolLM2 (the session's service, see conftest.py).
"""

import json
import time

import numpy as np
import pytest

import glassbox
from glassbox import wire
from glassbox.errors import GlassboxError
from glassbox.service import ServiceBackend
from glassbox.tokenizer import Tokenizer

from conftest import ROOT

GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "tokenizer" / "smollm2_golden.json").read_text())
NAME = "smollm2-135m"
GOLDEN_PARIS = 7042  # " Paris" in SmolLM2's vocabulary (tests/fixtures/tokenizer)
NEVER = 3600.0  # a poll interval no test could outwait: only a wake-up ends these waits


@pytest.fixture(scope="module")
def never_polling(smollm2_service):
    """A backend whose waits never redraw or re-ask on their own within a test's life."""
    backend = ServiceBackend(smollm2_service.url, smollm2_service.api_key, quiet=True,
                             progress_interval=NEVER, requery_interval=NEVER)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def model(never_polling):
    return glassbox.Model(NAME, backend=never_polling, arrays="numpy")


def lens_top(model, prompt):
    with model.trace(prompt, timeout=60) as tr:
        top = model.lm_head.output[0, -1].argmax().save()
    return tr, int(top.value)


def test_a_finished_job_wakes_a_blocking_wait(model):
    # With nothing to poll for an hour, the wait ends only because the outcome woke it;
    # the 60 s time-out would raise JobTimeoutError otherwise.
    _, top = lens_top(model, "The capital of France is")
    assert model.tokenizer.decode([top]) == " Paris"


def test_a_finished_job_wakes_its_future_and_run_all(model):
    with model.trace("The capital of Italy is", blocking=False) as tr:
        top = model.lm_head.output[0, -1].argmax().save()
    assert tr.result(timeout=60) is tr
    assert model.tokenizer.decode([int(top.value)]) == " Rome"
    prompts = ["The capital of France is", "The capital of Italy is"] * 3
    results = glassbox.run_all([lambda p=p: lens_top(model, p)[1] for p in prompts],
                               max_concurrency=3, timeout=120)
    assert [model.tokenizer.decode([t]) for t in results] == [" Paris", " Rome"] * 3


def test_a_visible_progress_line_does_not_delay_the_outcome(smollm2_service, capsys):
    backend = ServiceBackend(smollm2_service.url, smollm2_service.api_key, quiet=False,
                             progress_interval=NEVER, requery_interval=NEVER)
    try:
        _, top = lens_top(glassbox.Model(NAME, backend=backend, arrays="numpy"),
                          "The capital of France is")
    finally:
        backend.close()
    assert top == GOLDEN_PARIS
    assert "glassbox: job" in capsys.readouterr().err


def long_generation(model):
    """A generation of 512 tokens (held at the worker, then cancelled, by the test)."""
    with model.generate("Once upon a time", max_new_tokens=512, blocking=False) as tr:
        model.lm_head.output.save()
    return tr


@pytest.mark.parametrize("refusal", [
    GlassboxError("INVALID_ARGUMENT", 'type: unknown message type "tokenize"'),  # older broker
    GlassboxError("UNAVAILABLE", "the worker did not tokenize the text within 10 s; try again"),
])
def test_an_older_service_without_tokenize_still_encodes_with_a_job(refusal):
    asked, ran = [], []

    def tokenize(text):
        asked.append(text)
        raise refusal

    def run(request):
        ran.append(request.traces[0].invokes[0].prompt)
        return wire.Result(saved=[wire.SavedValue("ids", 1, np.array([[5, 6]], np.int64))])

    tokenizer = Tokenizer({"tokens": ["a"] * 8}, run, NAME, tokenize)
    assert tokenizer.encode("one") == [5, 6] and tokenizer.encode("two") == [5, 6]
    assert asked == ["one"] and ran == ["one", "two"]  # asked once, then jobs only


def test_other_tokenize_errors_are_raised():
    def tokenize(text):
        raise GlassboxError("INVALID_ARGUMENT", "a text of 2000000 bytes is over the limit")

    tokenizer = Tokenizer({"tokens": ["a"]}, lambda r: None, NAME, tokenize)
    with pytest.raises(GlassboxError, match="over the limit"):
        tokenizer.encode("x")


def wait_until_running(future, timeout=60.0):
    deadline = time.monotonic() + timeout
    while future.status(refresh=True).state != "RUNNING":
        assert not future.done() and time.monotonic() < deadline, future.status()
        time.sleep(0.05)


def test_tokenizer_and_catalogue_do_not_wait_for_a_running_job(smollm2_service, never_polling):
    # The worker holds the generation unrun (its only slot busy) until the test is through,
    # so no speed of machine can end it before the calls below.
    smollm2_service.hold.touch()
    busy = long_generation(glassbox.Model(NAME, backend=never_polling, arrays="numpy"))
    try:
        wait_until_running(busy)
        # A fresh connection and model: nothing cached, the catalogue comes from the broker.
        other = ServiceBackend(smollm2_service.url, smollm2_service.api_key, quiet=True,
                               call_timeout=30)
        try:
            fresh = glassbox.Model(NAME, backend=other, arrays="numpy")
            cases = [c for c in GOLDEN["cases"] if c["text"]][:20]
            for case in cases:  # Hugging Face tokenizers' ids for the same texts
                assert fresh.tokenizer.encode(case["text"]) == case["ids"], case["name"]
            assert fresh.tokenizer.encode(" Paris") == [GOLDEN_PARIS]
            served = {m.name: m for m in other.models()}
            assert served[NAME].workers == 1
        finally:
            other.close()
        # ... all answered while the only worker was still running the generation.
        assert busy.status(refresh=True).state == "RUNNING"
    finally:
        busy.cancel()
        smollm2_service.hold.unlink()
