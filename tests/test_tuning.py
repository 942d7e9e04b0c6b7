"""The fit tunes itself on validation: the head's size is chosen by known users' validation ranking."""

from __future__ import annotations

import json

import polars as pl
import pytest

from pamela_lite import model as model_module
from pamela_lite.model import LARGE_HEAD, PersonalScorer

from .conftest import SMALL_MODEL


def _fit(dataset, **params):
    return PersonalScorer(random_state=0, **{**SMALL_MODEL, **params}).fit(
        dataset.split("train"), dataset.embeddings, dataset.scale, validation=dataset.split("val_seen"))


def _no_margin(monkeypatch, margin: float = -1.0):
    """Let `margin` alone decide: the noise term (a multiple of the paired standard error, which
    the margin is compared with) is pushed below any margin, so -1 keeps the larger head even
    when it ranks validation a little worse."""
    monkeypatch.setattr(model_module, "TUNE_MIN_GAIN", margin)
    monkeypatch.setattr(model_module, "TUNE_STANDARD_ERRORS", -1e6)


@pytest.mark.parametrize("margin, expected", [(-1.0, "large"), (1.0, "compact")])
def test_the_larger_head_is_kept_only_when_it_clears_the_margin(dataset, monkeypatch, margin, expected):
    _no_margin(monkeypatch, margin)
    tuning = _fit(dataset).fitted_.tuning
    assert tuning["head"] == expected
    assert set(tuning["validation_srocc"]) == {"compact", "large"}


def test_a_gain_within_the_noise_between_people_keeps_the_compact_head(dataset, monkeypatch):
    monkeypatch.setattr(model_module, "TUNE_MIN_GAIN", -1.0)  # only the paired standard error decides
    monkeypatch.setattr(model_module, "TUNE_STANDARD_ERRORS", 1e6)
    tuning = _fit(dataset).fitted_.tuning
    assert tuning["head"] == "compact" and tuning["gain_needed"] > abs(tuning["gain"])


def test_the_recorded_compact_score_is_the_untuned_models_validation_srocc(dataset):
    from pamela_lite.metrics import per_user

    tuning = _fit(dataset, use_catalogue=False).fitted_.tuning
    untuned = _fit(dataset, tune=False, use_catalogue=False)
    known = dataset.split("val_seen").filter(pl.col("participant_id").is_in(untuned.users_))
    scores = per_user(known.with_columns(score=pl.Series(untuned.utility(known, dataset.embeddings))))
    assert tuning["validation_srocc"]["compact"] == pytest.approx(float(scores["srocc"].mean()), abs=1e-9)


def test_validation_without_rankable_people_tunes_nothing(dataset):
    # 4 ratings per person: too few for a per-person rank correlation
    thin = dataset.split("val_seen").group_by("participant_id", maintain_order=True).head(4)
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(dataset.split("train"), dataset.embeddings,
                                                                dataset.scale, validation=thin)
    assert model.fitted_.tuning is None


def test_no_tune_on_the_command_line_records_no_choice(world, tmp_path):
    from pamela_lite import fit

    out = tmp_path / "model"
    params = json.dumps({k: v for k, v in SMALL_MODEL.items() if k != "n_threads"})
    assert fit.main(["--data", str(world), "--out", str(out), "--no-tune", "--no-baselines", "--quiet",
                     "--params", params]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert "tuning" not in meta and meta["params"]["tune"] is False


def test_the_kept_head_has_the_chosen_settings(dataset, monkeypatch):
    _no_margin(monkeypatch)
    fitted = _fit(dataset).fitted_
    leaves = json.loads(json.dumps(fitted.tuning))["head_params"]["head_leaves"]
    assert leaves == LARGE_HEAD["head_leaves"] and f"[num_leaves: {LARGE_HEAD['head_leaves']}]" in fitted.head


def test_no_tune_fits_the_constructors_head_and_records_no_choice(dataset):
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


def test_head_settings_given_on_the_command_line_are_used_as_given(world, tmp_path, capsys):
    from pamela_lite import fit

    out = tmp_path / "model"
    params = json.dumps({**{k: v for k, v in SMALL_MODEL.items() if k != "n_threads"}, "head_leaves": 7})
    assert fit.main(["--data", str(world), "--out", str(out), "--no-baselines", "--params", params]) == 0
    meta = json.loads((out / "model.json").read_text())
    assert "tuning" not in meta and "[num_leaves: 7]" in (out / "head.txt").read_text()
    assert "residual head not tuned" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_block_world():
    """Taste the embedding shows only in part, 150 ratings a person: a smaller principal block
    ranks their out-of-fold ratings better (+0.013 per-user SROCC here)."""
    from pamela_lite import worlds

    return worlds.dataset(worlds.make("shared", seed=0, n_users=100, n_images=1000, ratings_per_user=150))


def _fit_train(dataset, **params):
    """A fit on training ratings alone: the principal block is judged on them, out of fold."""
    return PersonalScorer(random_state=0, **{**SMALL_MODEL, "n_components": 32, **params}).fit(
        dataset.split("train"), dataset.embeddings, dataset.scale)


def test_out_of_fold_ratings_may_choose_the_smaller_principal_block(small_block_world):
    model = _fit_train(small_block_world)
    choice = model.principal_choice_
    assert model.n_components_ == choice["n_components"] == model_module.SMALL_PRINCIPAL_BLOCK
    assert choice["gain"] >= choice["gain_needed"] and model.taste_dimensions()[0] == model.n_components_
    assert model.n_components == 32  # the parameter stays as given
    scores = choice["out_of_fold_srocc"]
    assert scores["8"] - scores["32"] == pytest.approx(choice["gain"], abs=1e-9)  # the same people on both sides
    assert model.fitted_.image_side.pca_components.shape[1] == sum(model.taste_dimensions()[:2]) + sum(
        model.metadata_blocks_.values())  # the scorer is the chosen block's


def test_the_saved_model_says_how_many_principal_components_it_uses(small_block_world, tmp_path):
    # model.json showed only the constructor's n_components (32) for a fit that used 8
    model = _fit_train(small_block_world)
    meta = json.loads((model.save(tmp_path / "m") / "model.json").read_text())
    principal, learned, metadata, _ = model.taste_dimensions()
    assert meta["taste_coordinates"] == {"principal": principal, "learned": learned, "metadata": metadata}
    assert meta["taste_coordinates"]["principal"] == model_module.SMALL_PRINCIPAL_BLOCK
    assert meta["params"]["n_components"] == 32  # the parameter as given
    assert PersonalScorer.load(tmp_path / "m").fitted_.taste_coordinates == meta["taste_coordinates"]


def test_the_smaller_principal_block_must_clear_the_margin(small_block_world, monkeypatch):
    monkeypatch.setattr(model_module, "TUNE_MIN_GAIN", 1.0)
    model = _fit_train(small_block_world)
    assert model.n_components_ == 32 and model.principal_choice_["n_components"] == 32
    assert model.taste_dimensions()[0] == 32


def test_keeping_the_larger_block_gives_the_model_fitted_without_the_choice(small_block_world, monkeypatch):
    # the choice fits the small block on the side: keeping the larger one changes nothing
    monkeypatch.setattr(model_module, "TUNE_MIN_GAIN", 1.0)
    chosen, given = _fit_train(small_block_world), _fit_train(small_block_world, tune=False)
    assert chosen.principal_choice_ is not None and chosen.n_components_ == 32  # asked, and kept the larger
    pairs = small_block_world.split("test_seen").filter(pl.col("participant_id").is_in(given.users_))
    assert (chosen.predict(pairs, small_block_world.embeddings) == given.predict(pairs, small_block_world.embeddings)).all()


@pytest.mark.parametrize("params", [dict(tune=False), dict(taste_basis="pca"), dict(n_components=8)])
def test_no_principal_choice_without_tuning_learned_directions_or_a_larger_block(small_block_world, params):
    model = _fit_train(small_block_world, **params)
    assert model.principal_choice_ is None and model.n_components_ == model.n_components
