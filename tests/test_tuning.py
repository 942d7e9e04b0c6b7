"""The fit tunes itself on validation: the head's size is chosen by known users' validation ranking."""

from __future__ import annotations

import json

import pytest

from pamela_lite import model as model_module
from pamela_lite.model import LARGE_HEAD, PersonalScorer

from .conftest import SMALL_MODEL


def _fit(dataset, **params):
    return PersonalScorer(random_state=0, **{**SMALL_MODEL, **params}).fit(
        dataset.split("train"), dataset.embeddings, dataset.scale, validation=dataset.split("val_seen"))


@pytest.mark.parametrize("margin, expected", [(-1.0, "large"), (1.0, "compact")])
def test_the_larger_head_is_kept_only_when_it_clears_the_margin(dataset, monkeypatch, margin, expected):
    monkeypatch.setattr(model_module, "TUNE_MIN_GAIN", margin)
    tuning = _fit(dataset).fitted_.tuning
    assert tuning["head"] == expected
    assert set(tuning["validation_srocc"]) == {"compact", "large"}


def test_the_kept_head_has_the_chosen_settings(dataset, monkeypatch):
    monkeypatch.setattr(model_module, "TUNE_MIN_GAIN", -1.0)
    fitted = _fit(dataset).fitted_
    leaves = json.loads(json.dumps(fitted.tuning))["head_params"]["head_leaves"]
    assert leaves == LARGE_HEAD["head_leaves"] and f"[num_leaves: {LARGE_HEAD['head_leaves']}]" in fitted.head


def test_no_tune_fits_the_constructors_head_and_records_no_choice(dataset, fitted):
    untuned = _fit(dataset, tune=False)
    assert untuned.fitted_.tuning is None
    assert f"[num_leaves: {PersonalScorer().head_leaves}]" in untuned.fitted_.head


def test_the_choice_is_kept_in_the_model_folder(fitted, tmp_path):
    loaded = PersonalScorer.load(fitted.save(tmp_path / "model"))
    assert loaded.fitted_.tuning == json.loads(json.dumps(fitted.fitted_.tuning))
    assert json.loads((tmp_path / "model" / "model.json").read_text())["tuning"]["head"] in ("compact", "large")


def test_without_validation_nothing_is_tuned(dataset):
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings,
                                                                dataset.scale)
    assert model.fitted_.tuning is None
