"""Saved values are real tensors (issue 15, item 3): torch.Tensor when torch is installed,
numpy arrays otherwise, and pickle, torch.save and np.save work on them and on the saved
proxies themselves. Run under the project's .venv (numpy) and under a venv with the PyPI
torch wheel (-DGLASSBOX_PYTHON; GLASSBOX_TEST_TORCH=1 makes torch required)."""

import io
import os
import pickle

import numpy as np
import pytest

import glassbox
from glassbox.results import torch_available

from conftest import TINY_LLAMA

IDS = [1, 31, 4, 88, 120]


def test_torch_is_there_when_the_lane_says_so():
    if os.environ.get("GLASSBOX_TEST_TORCH") == "1":
        assert torch_available(), "GLASSBOX_TEST_TORCH=1 but this Python has no torch"


@pytest.fixture(scope="module")
def auto_model(engine):
    return glassbox.Model("tiny-llama", backend=glassbox.LocalBackend(TINY_LLAMA, engine=engine))


def _saved(model):
    with model.trace(IDS):
        hidden = model.model.layers[1].output.save()
        total = model.model.layers[1].output.sum().save()
    return hidden, total


def test_saved_values_are_torch_tensors_when_torch_is_installed(auto_model):
    hidden, total = _saved(auto_model)
    if torch_available():
        import torch

        assert isinstance(hidden.value, torch.Tensor) and hidden.value.dtype == torch.float32
    else:
        assert isinstance(hidden.value, np.ndarray)
    assert tuple(hidden.shape) == (1, 5, 64)
    assert tuple(total.value.shape) == ()  # a saved scalar has shape (), as in torch


def test_pickle_works_on_values_and_on_saved_proxies(auto_model):
    hidden, total = _saved(auto_model)
    for saved in (hidden, total):
        for thing in (saved, saved.value):
            back = pickle.loads(pickle.dumps(thing))
            assert type(back) is type(saved.value)  # the proxy pickles as its value
            np.testing.assert_array_equal(np.asarray(back), np.asarray(saved.value))


def test_np_save_works_on_values_and_on_saved_proxies(auto_model, tmp_path):
    hidden, _ = _saved(auto_model)
    for name, thing in (("proxy.npy", hidden), ("value.npy", hidden.value)):
        np.save(tmp_path / name, thing)
        np.testing.assert_array_equal(np.load(tmp_path / name), np.asarray(hidden.value))


if torch_available():  # (defined only where torch is: a skip fails under the test command)
    def test_torch_save_works_on_values_and_on_saved_proxies(auto_model):
        import torch

        hidden, _ = _saved(auto_model)
        for thing in (hidden, hidden.value, {"h": hidden}):
            buffer = io.BytesIO()
            torch.save(thing, buffer)
            buffer.seek(0)
            back = torch.load(buffer, weights_only=True)  # no glassbox class inside the file
            back = back["h"] if isinstance(back, dict) else back
            assert isinstance(back, torch.Tensor)
            assert torch.equal(back, hidden.value)


def test_a_value_that_is_not_there_does_not_pickle(auto_model):
    with auto_model.trace(IDS):
        unsaved = auto_model.model.layers[1].output
    with pytest.raises(glassbox.TracingError, match="was not saved"):
        pickle.dumps(unsaved)
