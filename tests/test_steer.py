"""Steering (issue 10): the searches, the simulated generator and the command line."""

from __future__ import annotations

import json
import re

import numpy as np
import polars as pl
import pytest

from pamela_lite import steer, worlds
from pamela_lite.errors import InputError
from pamela_lite.steer_sim import SimulatedGenerator

from .conftest import SMALL_MODEL, cli

VOCAB = steer.Vocabulary.from_dict({"attributes": {"light": ["warm light", "cold light"],
                                                   "angle": ["low angle", "high angle", "top view"]}})


class ToyGenerator:
    """Embeddings (dim 2): phrase → fixed vector; seed → noise; records the seeds it was called with."""

    def __init__(self, noise=0.0):
        self.noise = noise
        self.calls = []

    def __call__(self, prompts, seeds):
        out = []
        for p, s in zip(prompts, seeds):
            self.calls.append(s)
            v = np.zeros(2)
            for part in p.split(", ")[1:]:
                v += {"warm light": [1, 0], "cold light": [-1, 0], "low angle": [0, 2], "high angle": [0, -1],
                      "top view": [0, 0.5]}[part]
            out.append(v + self.noise * np.random.default_rng(s).standard_normal(2))
        return np.array(out)


def first_coordinate(x):
    """Objective: the first coordinate plus the second (no posterior draws)."""
    return (x[:, 0] + x[:, 1])[:, None]


def test_best_of_n_returns_the_argmax_of_the_scorer():
    res = steer.search("best_of_n", ToyGenerator(noise=0.3), first_coordinate, VOCAB, "a cat", budget=40,
                       seeds_per_prompt=2)
    means = {row["prompt"]: row["mean"] for row in res.trajectory}
    assert res.prompt == max(means, key=means.get)


@pytest.mark.parametrize("method", ["best_of_n", "greedy", "thompson"])
def test_a_result_keeps_the_images_its_prompt_was_scored_on(method):
    # so another objective (the person's) can score the population's pick without a generator call
    res = steer.search(method, ToyGenerator(noise=0.5), first_coordinate, VOCAB, "a cat", budget=30,
                       seeds_per_prompt=3)
    assert res.chosen_images.shape[1] == 2 and len(res.chosen_images) % 3 == 0
    assert first_coordinate(res.chosen_images)[:, 0].mean() == pytest.approx(res.predicted)
    again = ToyGenerator(noise=0.5)(*zip(*[(res.prompt, s) for row in res.trajectory if row["prompt"] == res.prompt
                                           for s in row["seeds"]]))
    np.testing.assert_allclose(res.chosen_images, again)
    assert "chosen_images" not in res.as_dict() and "predicted_for_user" not in res.as_dict()


def test_greedy_never_returns_a_prompt_below_the_base_on_the_choosing_seeds():
    for seed in range(5):
        res = steer.search("greedy", ToyGenerator(noise=1.0), lambda x: -first_coordinate(x), VOCAB, "a cat",
                           budget=24, seeds_per_prompt=3, rng_seed=seed)
        assert res.predicted >= res.base_predicted


def test_greedy_finds_the_best_prompt_of_a_noiseless_additive_world():
    res = steer.search("greedy", ToyGenerator(), first_coordinate, VOCAB, "a cat", budget=60, seeds_per_prompt=1)
    assert res.edits == {"light": "warm light", "angle": "low angle"}


def test_thompson_spends_the_budget_and_beats_the_base():
    res = steer.search("thompson", ToyGenerator(noise=0.2), first_coordinate, VOCAB, "a cat", budget=60,
                       seeds_per_prompt=2)
    assert res.calls <= 60 and res.calls >= 58
    assert res.predicted > res.base_predicted + 1.0


def test_budget_is_never_exceeded_and_budget_below_one_is_refused():
    gen = ToyGenerator()
    res = steer.search("greedy", gen, first_coordinate, VOCAB, "a cat", budget=7, seeds_per_prompt=3)
    assert res.calls <= 7 and len(gen.calls) == res.calls
    with pytest.raises(steer.InputError, match="budget"):
        steer.search("greedy", gen, first_coordinate, VOCAB, "a cat", budget=0)


def test_every_prompt_is_compared_on_the_same_choosing_seeds_and_fresh_seeds_are_different():
    res = steer.search("greedy", ToyGenerator(), first_coordinate, VOCAB, "a cat", budget=20, seeds_per_prompt=4,
                       seeds=[5, 6, 7, 8])
    assert all(row["seeds"] == [5, 6, 7, 8] for row in res.trajectory)
    used = {s for row in res.trajectory for s in row["seeds"]}
    fresh = steer.fresh_seeds(16, used)
    assert len(set(fresh)) == 16 and not set(fresh) & used


def test_checkpoint_picks_are_prefixes_of_the_run():
    res = steer.search("best_of_n", ToyGenerator(noise=0.5), first_coordinate, VOCAB, "a cat", budget=40,
                       seeds_per_prompt=2, checkpoints=[4, 40])
    early = [row for row in res.trajectory if row["calls"] <= 4]
    choice, predicted = res.picks[4]
    assert predicted == pytest.approx(max(row["mean"] for row in early), abs=1e-4)
    assert res.picks[40][1] == res.predicted


def test_vocabulary_default_loads_and_malformed_files_name_the_problem(tmp_path):
    vocab = steer.Vocabulary.load()
    assert {"lighting", "camera angle", "viewpoint", "palette", "medium", "composition"} <= set(vocab.names)
    bad = tmp_path / "v.json"
    bad.write_text('{"attributes": {"light": ["warm, bright"]}}')
    with pytest.raises(steer.InputError, match="comma"):
        steer.Vocabulary.load(bad)
    bad.write_text("{not json")
    with pytest.raises(steer.InputError, match="not valid JSON"):
        steer.Vocabulary.load(bad)


def test_simulated_directions_are_independent_of_the_taste_and_principal_bases(steer_world, sim):
    D = steer_world.embeddings.shape[1]
    basis = np.linalg.qr(steer_world.taste_basis)[0]
    x = steer_world.embeddings - steer_world.embeddings.mean(0)
    pcs = np.linalg.svd(x, full_matrices=False)[2][:8].T
    phrases = [p for _, ps in steer.Vocabulary.load().attributes for p in ps]
    for space in (basis, pcs):
        share = np.mean([np.sum((space.T @ sim.raw_direction(p)) ** 2) for p in phrases])
        # a direction independent of a k-dim subspace has k/D of its energy there on average
        assert share < 3 * space.shape[1] / D


def test_simulated_variance_split_is_calibrated(sim):
    shares = sim.shares(n_phrases=600)
    assert abs(shares.shared_share - 0.25) < 0.08
    assert abs(shares.seed_to_edit - 1.0) < 0.3


@pytest.mark.parametrize("dependence, low, high", [(0.0, 0.999, 1.001), (0.5, 0.35, 0.7), (1.0, -0.2, 0.25)])
def test_base_dependent_edits_move_two_bases_alike_only_in_their_shared_part(steer_world, dependence, low, high):
    sim = SimulatedGenerator(steer_world, base_dependence=dependence)
    phrases = [p for _, ps in steer.Vocabulary.load().attributes for p in ps]
    cos = np.mean([sim.direction(p, 0) @ sim.direction(p, 1)
                   / np.linalg.norm(sim.direction(p, 0)) / np.linalg.norm(sim.direction(p, 1)) for p in phrases])
    assert low < cos < high
    assert abs(sim.shares(n_phrases=400).shared_share - 0.25) < 0.08  # the calibration does not move


def test_additive_edits_are_the_simulators_original_directions(steer_world, sim):
    from pamela_lite.steer_sim import _rng, _unit

    for phrase in ("golden hour light", "watercolour"):  # as drawn before base_dependence existed
        rng = _rng(sim.salt, "phrase", phrase)
        r = rng.standard_normal(sim.dim)
        r -= (r @ sim.g_pop) * sim.g_pop
        expected = sim.step * _unit(r) + rng.normal(0.0, sim.tau) * sim.g_pop
        np.testing.assert_array_equal(sim.direction(phrase, 3), expected)


def test_simulated_truth_reproduces_the_worlds_utilities(steer_world, sim):
    # a base prompt with no edit and no seed noise is its catalogue image: the world's own utility
    truth = steer_world.truth.head(50)
    rows = sim.truth
    u = [rows.base_utility[rows.row(p), k] for p, k in
         zip(truth["participant_id"].to_list(),
             pl.DataFrame({"image_id": truth["image_id"]}).join(
                 steer_world.images.with_row_index("k").select("image_id", "k"), on="image_id",
                 maintain_order="left")["k"].to_list())]
    assert np.corrcoef(u, truth["utility"].to_numpy())[0, 1] > 0.999


def test_simulated_generator_is_deterministic_and_seeds_scatter(steer_world, sim):
    p = steer_world.images["prompt"][0] + ", golden hour light"
    a, b = sim([p, p], [1, 2]), sim([p], [1])
    assert np.array_equal(a[0], b[0]) and not np.allclose(a[0], a[1])


def test_steering_for_self_beats_the_base_under_true_utility(steer_world, sim, tmp_path):
    from pamela_lite.model import PersonalScorer

    ds = worlds.dataset(steer_world)
    model = PersonalScorer(n_components=8, n_prototypes=8, factors=4, head_trees=20, n_folds=2, n_threads=1)
    model.fit(ds.split("train"), ds.embeddings, ds.scale)
    fresh = list(range(5000, 5016))
    gains = []
    for k, user in enumerate(model.users_[:6]):
        obj = steer.PersonalObjective(model, model.user_states_[k])
        base = steer_world.images["prompt"][k]
        res = steer.search("greedy", sim, obj, steer.Vocabulary.load(), base, 64, 4)
        gains.append(sim.true_utility(user, [res.prompt] * 16, fresh).mean()
                     - sim.true_utility(user, [base] * 16, fresh).mean())
    assert np.mean(gains) > 0


def test_posterior_draws_spread_around_the_state(fitted, dataset):
    train = dataset.split("train")
    user = fitted.users_[0]
    rows = train.filter(pl.col("participant_id") == user)
    post = steer.state_posterior(fitted, fitted.user_states_[0], dataset.embeddings.take(rows["image_id"]),
                                 rows["rating"].to_numpy())
    draws = post.sample(400, np.random.default_rng(0))
    taste = fitted.state_slices["taste"]
    assert np.allclose(draws.mean(0)[taste], fitted.user_states_[0][taste], atol=4 * np.sqrt(np.diag(post.cov)[taste].max() / 400) + 1e-6)
    assert np.all(draws[:, fitted.state_slices["factors"]] == fitted.user_states_[0][fitted.state_slices["factors"]])
    fewer = steer.state_posterior(fitted, fitted.user_states_[0], dataset.embeddings.take(rows["image_id"][:5]),
                                  noise_var=post.noise_var)
    assert np.trace(fewer.cov) > np.trace(post.cov)


@pytest.mark.parametrize("args, problem", [
    (["--user", "nobody"], "not known to the model"),
    (["--user", "p0001", "--budget", "0"], "--budget must be at least 1"),
    (["--user", "p0001", "--budget", "6", "--seeds-per-prompt", "4"], "renders only one prompt on 4 seeds"),
    (["--user", "p0001", "--budget", "3", "--seeds-per-prompt", "4"], "renders no prompt on 4 seeds"),
    (["--user", "p0001", "--vocabulary", "BAD"], "attributes"),
    (["--user", "p0001", "--samples", "-3"], "--samples (posterior draws) must be 0 or more"),
])
def test_cli_bad_input_exits_2_with_one_line(fitted, tmp_path, args, problem):
    model = fitted.save(tmp_path / "model")
    bad = tmp_path / "bad.json"
    bad.write_text('{"attributes": []}')
    args = [str(bad) if a == "BAD" else a for a in args]
    out = cli("steer", "--model", model, "--prompt", "a cat", "--generator", "stub", "--out", tmp_path / "o", *args)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and problem in out.stderr
    assert not (tmp_path / "o").exists()


def test_cli_context_of_a_known_person_says_to_name_them_with_user(fitted, dataset, tmp_path):
    # the message once recommended --refit-known, a flag steer does not have
    model = fitted.save(tmp_path / "model")
    known = dataset.split("train").filter(pl.col("participant_id") == fitted.users_[0]).head(5)
    known.select("participant_id", "image_id", "rating").write_csv(tmp_path / "ctx.csv")
    out = cli("steer", "--model", model, "--prompt", "a cat", "--generator", "stub", "--out", tmp_path / "o",
              "--context", tmp_path / "ctx.csv", "--embeddings", dataset.embeddings.source)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "give --user ID without a context file" in out.stderr and "--refit-known" not in out.stderr


def test_cli_sim_generator_refuses_a_model_fitted_on_another_world(tmp_path):
    from pamela_lite.model import PersonalScorer

    default = worlds.make("sparse")  # the world --generator sim:sparse builds
    other = worlds.make("sparse", n_users=30, n_images=300, n_ratings=3000, dim=default.embeddings.shape[1], seed=9)
    data = worlds.dataset(other)
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(data.split("train"), data.embeddings, data.scale)
    user = next(u for u in model.users_ if u in set(default.users["participant_id"].to_list()))
    out = cli("steer", "--model", model.save(tmp_path / "model"), "--user", user, "--generator", "sim:sparse",
              "--prompt", default.images["prompt"][0], "--budget", "8", "--out", tmp_path / "o")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "was not fitted on the world" in out.stderr


def test_cli_sim_generator_refuses_a_context_for_a_model_fitted_on_another_world(tmp_path):
    # the context's image ids were looked up in the simulated world, whose images are others
    from pamela_lite.model import PersonalScorer

    default = worlds.make("sparse")
    other = worlds.make("sparse", n_users=30, n_images=300, n_ratings=3000, dim=default.embeddings.shape[1], seed=9)
    data = worlds.dataset(other)
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(data.split("train"), data.embeddings, data.scale)
    pl.DataFrame({"participant_id": ["newp"] * 3, "image_id": default.images["image_id"][:3],
                  "rating": [1, 3, 5]}).write_csv(tmp_path / "ctx.csv")
    for person in (["--context", tmp_path / "ctx.csv"], ["--objective", "population"]):
        out = cli("steer", "--model", model.save(tmp_path / "model"), *person, "--generator", "sim:sparse",
                  "--prompt", default.images["prompt"][0], "--budget", "8", "--out", tmp_path / "o")
        assert out.returncode == 2, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "was not fitted on the world" in out.stderr
        assert not (tmp_path / "o").exists()


def test_sim_generator_takes_a_model_fitted_on_its_world(tmp_path):
    from argparse import Namespace

    from pamela_lite.model import PersonalScorer
    from pamela_lite.steer import _check_fitted_on

    world = worlds.make("sparse")
    data = worlds.dataset(world)
    some = data.split("train").filter(pl.col("participant_id").is_in(world.users["participant_id"][:20].implode()))
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(some, data.embeddings, data.scale)
    _check_fitted_on(world, model, Namespace(model=tmp_path / "model", generator="sim:sparse"))  # no error


def test_cli_sim_generator_steers_for_a_person_added_to_a_model_of_its_world(tmp_path):
    # the per-person check compared an added person's ratings with the world's training ratings
    from pamela_lite.model import PersonalScorer

    world = worlds.make("sparse")
    data = worlds.dataset(world)
    some = data.split("train").filter(pl.col("participant_id").is_in(world.users["participant_id"][:20].implode()))
    model = PersonalScorer(random_state=0, **SMALL_MODEL).fit(some, data.embeddings, data.scale)
    model.add_users(pl.DataFrame({"participant_id": ["newp"] * 5, "image_id": world.images["image_id"][:5],
                                  "rating": [1, 2, 3, 4, 5]}), data.embeddings)
    out = cli("steer", "--model", model.save(tmp_path / "model"), "--user", "newp", "--generator", "sim:sparse",
              "--prompt", world.images["prompt"][0], "--budget", "8", "--no-plot", "--quiet", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr


def test_cli_a_note_about_the_base_prompt_never_joins_an_error(tmp_path):
    out = cli("steer", "--model", tmp_path / "none", "--user", "x", "--prompt", "a cat, close-up", "--out", tmp_path / "o")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "no model here" in out.stderr


def test_cli_missing_model_exits_2(tmp_path):
    out = cli("steer", "--model", tmp_path / "none", "--user", "x", "--prompt", "a cat", "--out", tmp_path / "o")
    assert out.returncode == 2 and "no model here" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_missing_scorer_exits_2_with_one_line(fitted, tmp_path):
    model = fitted.save(tmp_path / "model")
    out = cli("steer", "--model", model, "--user", fitted.users_[0], "--prompt", "a cat", "--generator", "stub",
              "--budget", "8", "--scorer", tmp_path / "none.onnx", "--out", tmp_path / "o")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "none.onnx" in out.stderr
    assert not (tmp_path / "o").exists()


def test_cli_stub_generator_writes_the_trajectory(fitted, tmp_path):
    model = fitted.save(tmp_path / "model")
    user = fitted.users_[0]
    out = cli("steer", "--model", model, "--user", user, "--prompt", "a cat", "--generator", "stub",
              "--budget", "12", "--seeds-per-prompt", "2", "--no-plot", "--quiet", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "o" / "steer.json").read_text())
    assert [r["objective"] for r in payload["results"]] == ["personal", "population"]
    assert all(r["calls"] <= 12 and r["trajectory"] for r in payload["results"])
    # the person's score of the population's pick, beside the head's own score of it
    personal, population = payload["results"]
    assert "predicted_for_user" not in personal and np.isfinite(population["predicted_for_user"])
    printed = [json.loads(line) for line in out.stdout.splitlines()]
    assert printed[1]["predicted_for_user"] == round(population["predicted_for_user"], 4)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["steer.json"]


def test_cli_keeps_the_attributes_a_base_prompt_already_sets(fitted, tmp_path):
    # "close-up, oil painting" once came back as "close-up, oil painting, ..., aerial view, 35mm film photograph"
    sets = dict(steer.Vocabulary.load().attributes)
    out = cli("steer", "--model", fitted.save(tmp_path / "model"), "--user", fitted.users_[0], "--prompt",
              "a food photo, Close-up, oil painting", "--generator", "stub", "--budget", "64", "--no-plot",
              "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    assert "already sets viewpoint ('close-up'), medium ('oil painting')" in out.stderr
    kept = json.loads((tmp_path / "o" / "steer.json").read_text())["kept_from_prompt"]
    assert kept == {"viewpoint": "close-up", "medium": "oil painting"}
    prompts = [row["prompt"] for r in json.loads((tmp_path / "o" / "steer.json").read_text())["results"]
               for row in r["trajectory"]]
    assert len(prompts) > 2
    for prompt in prompts:
        parts = [part.strip().casefold() for part in prompt.split(",")]
        assert parts.count("close-up") == 1 and parts.count("oil painting") == 1
        assert not any(p.casefold() in parts for p in sets["viewpoint"] + sets["medium"]
                       if p not in ("close-up", "oil painting"))


def test_a_base_prompt_setting_every_attribute_leaves_nothing_to_steer():
    vocab = steer.Vocabulary.from_dict({"attributes": {"light": ["soft light"], "view": ["close-up", "aerial view"]}})
    assert vocab.set_by("a cat, aerial view")[0].names == ["light"]
    with pytest.raises(InputError, match="nothing is left to steer"):
        vocab.set_by("a cat, soft light, close-up")


def test_cli_population_objective_needs_no_person(fitted, tmp_path):
    out = cli("steer", "--model", fitted.save(tmp_path / "model"), "--objective", "population", "--prompt", "a cat",
              "--generator", "stub", "--budget", "8", "--seeds-per-prompt", "2", "--no-plot", "--quiet",
              "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "o" / "steer.json").read_text())
    assert payload["user"] == "population" and [r["objective"] for r in payload["results"]] == ["population"]


def test_cli_personal_objective_still_needs_a_person(fitted, tmp_path):
    out = cli("steer", "--model", fitted.save(tmp_path / "model"), "--objective", "personal", "--prompt", "a cat",
              "--generator", "stub", "--budget", "8", "--out", tmp_path / "o")
    assert out.returncode == 2 and "--user ID" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_cli_known_person_gets_a_taste_spread_from_the_ratings_the_model_keeps(fitted, dataset, tmp_path):
    model = fitted.save(tmp_path / "model")
    user = fitted.users_[0]
    kept = fitted.ratings_.filter(pl.col("participant_id") == str(user)).height
    out = cli("steer", "--model", model, "--user", user, "--prompt", "a cat", "--generator", "stub",
              "--budget", "8", "--no-plot", "--quiet", "--embeddings", dataset.embeddings.source,
              "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "o" / "steer.json").read_text())
    assert payload["posterior_ratings"] == kept > 0
    assert payload["results"][0]["spread_taste"] > 0


@pytest.mark.parametrize("text, problem", [
    ('{"attributes": {"light": ["soft light"], "light": ["neon"]}}', "key(s) given twice"),  # "soft light" vanished
    ('{"attributes": {"light": ["soft\\nlight"]}}', "a line break"),
])
def test_a_vocabulary_file_that_would_lose_or_break_phrases_is_refused(tmp_path, text, problem):
    (tmp_path / "v.json").write_text(text)
    with pytest.raises(InputError, match=re.escape(problem)):
        steer.Vocabulary.load(tmp_path / "v.json")


@pytest.mark.parametrize("spec, problem", [
    ("math:pi", "pi is not callable (it is 'float')"),
    ("json:loads", "the factory failed: TypeError"),
    ("builtins:object", "the factory returned 'object', not a generate(prompts, seeds) callable"),
])
def test_a_generator_factory_that_cannot_give_a_generator_is_one_input_error(spec, problem, tmp_path):
    with pytest.raises(InputError, match=re.escape(problem)) as err:
        steer._generator(spec, 8, tmp_path)
    assert "\n" not in str(err.value)


def test_a_generator_that_returns_nan_is_named_for_its_values_not_its_shape():
    def nans(prompts, seeds):
        out = np.zeros((len(prompts), 2))
        out[0, 1] = np.nan
        return out
    with pytest.raises(InputError, match=r"returned 1 of 2 embeddings with NaN or infinite values"):
        steer.search("greedy", nans, first_coordinate, VOCAB, "a cat", budget=8, seeds_per_prompt=2)


@pytest.mark.parametrize("header, problem", [
    ({"format": "something else"}, "not a steering vocabulary"),
    ({"format": "something else", "attributes": "not ours"}, "not a steering vocabulary"),  # before its contents
    ({"version": 99}, "vocabulary version 99"),
    ({"version": "1"}, "vocabulary version '1'"),
    ({"version": True}, "vocabulary version True"),
])
def test_a_vocabulary_of_another_format_or_version_is_refused(header, problem):
    with pytest.raises(InputError, match=problem):
        steer.Vocabulary.from_dict({"attributes": {"light": ["warm light"]}, **header}, "v.json")


def test_a_vocabulary_version_written_as_a_float_is_read():
    assert steer.Vocabulary.from_dict({"version": 1.0, "attributes": {"light": ["warm light"]}}).names == ["light"]


def test_the_packaged_vocabulary_header_is_the_one_checked():
    raw = json.loads(steer.Vocabulary.default_path().read_text())
    assert raw["format"] == steer.VOCABULARY_FORMAT and raw["version"] == steer.VOCABULARY_VERSION


def test_cli_says_when_a_budget_cannot_be_spent_whole_and_when_taste_or_seed_spread_is_not_drawn(fitted, dataset,
                                                                                                  tmp_path):
    out = cli("steer", "--model", fitted.save(tmp_path / "model"), "--user", fitted.users_[0], "--prompt", "a cat",
              "--generator", "stub", "--budget", "9", "--seeds-per-prompt", "1", "--samples", "0", "--no-plot",
              "--embeddings", dataset.embeddings.source, "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    assert "--budget 9 is not a multiple of --seeds-per-prompt 1" not in out.stderr  # 9 is: no warning
    assert "taste sd not drawn (--samples 0: it needs 2 or more)" in out.stderr
    assert "seed sd n/a: one seed per prompt" in out.stderr
    assert "nan" not in out.stderr
    odd = cli("steer", "--model", tmp_path / "model", "--user", fitted.users_[0], "--prompt", "a cat",
              "--generator", "stub", "--budget", "9", "--seeds-per-prompt", "2", "--no-plot", "--out", tmp_path / "p")
    assert odd.returncode == 0, odd.stderr
    assert "--budget 9 is not a multiple of --seeds-per-prompt 2" in odd.stderr and "at most 8 calls" in odd.stderr
    assert all(r["calls"] <= 8 for r in json.loads((tmp_path / "p" / "steer.json").read_text())["results"])


def test_cli_says_when_a_search_converged_before_its_budget(fitted, tmp_path):
    out = cli("steer", "--model", fitted.save(tmp_path / "model"), "--user", fitted.users_[0], "--prompt", "a cat",
              "--generator", "stub", "--budget", "5000", "--seeds-per-prompt", "1", "--objective", "personal",
              "--no-plot", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    calls = json.loads((tmp_path / "o" / "steer.json").read_text())["results"][0]["calls"]
    assert calls < 5000 and f"after {calls} calls of 5000: converged" in out.stderr


def test_cli_context_naming_another_person_says_when_they_are_known(fitted, dataset, tmp_path):
    model = fitted.save(tmp_path / "model")
    new = dataset.split("train").filter(pl.col("participant_id") == fitted.users_[1]).head(5)
    new.select("image_id", "rating").with_columns(participant_id=pl.lit("newcomer")).write_csv(tmp_path / "ctx.csv")
    out = cli("steer", "--model", model, "--prompt", "a cat", "--generator", "stub", "--out", tmp_path / "o",
              "--context", tmp_path / "ctx.csv", "--user", fitted.users_[0], "--embeddings", dataset.embeddings.source)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "known to the model: drop --context to steer for them" in out.stderr


def test_a_generator_that_fails_while_generating_is_one_input_error():
    def failing(prompts, seeds):
        raise RuntimeError("out of GPU memory")
    with pytest.raises(InputError, match="the generator failed on 'a cat': RuntimeError: out of GPU memory"):
        steer.search("greedy", failing, first_coordinate, VOCAB, "a cat", budget=8, seeds_per_prompt=2)


def test_cli_warns_that_population_steering_does_not_use_the_person(fitted, tmp_path):
    out = cli("steer", "--model", fitted.save(tmp_path / "model"), "--objective", "population", "--user",
              fitted.users_[0], "--prompt", "a cat", "--generator", "stub", "--budget", "8", "--no-plot",
              "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    assert "steers by the population head alone: the person given" in out.stderr
