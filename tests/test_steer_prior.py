"""The prompt-side model of steering (issue 10 §1): phrase effects learnt from a log of past
generations, a person's predicted gain per phrase, and the search that starts from it."""

from __future__ import annotations

import json
import zlib

import numpy as np
import polars as pl
import pytest

from pamela_lite import steer, worlds

from .conftest import cli, write_embeddings
from .test_steer import VOCAB, ToyGenerator, first_coordinate


@pytest.fixture(scope="module")
def sim_effects(sim):
    prompts, emb = sim.past_generations(steer.Vocabulary.load(), n_bases=100, prompts_per_base=8)
    return steer.PhraseEffects.fit(prompts, emb, steer.Vocabulary.load())


def toy_log(n: int = 60):
    """Prompts of the toy generator: every combination of phrases, twice, on one base."""
    rng = np.random.default_rng(0)
    prompts = [VOCAB.render("a cat", VOCAB.random_choice(rng)) for _ in range(n)]
    return prompts, ToyGenerator()(prompts, list(range(100, 100 + n)))


def test_fitted_shifts_recover_the_simulators_phrase_directions(sim, sim_effects):
    cos = [sim_effects.shifts[k] @ sim.direction(p) / np.linalg.norm(sim_effects.shifts[k])
           / np.linalg.norm(sim.direction(p)) for k, p in enumerate(sim_effects.phrases)]
    assert min(cos) > 0.9


def test_shifts_compare_within_a_base_prompt_so_bases_cancel():
    # The phrase is far more common on the base whose images sit far away: a plain mean
    # difference would credit the phrase with the bases' distance; the per-base intercepts do not.
    vocab = steer.Vocabulary.from_dict({"attributes": {"light": ["warm light"]}})
    prompts = ["a cat"] * 10 + ["a cat, warm light"] * 2 + ["a dog"] * 2 + ["a dog, warm light"] * 10
    shift = np.array([0.0, 1.0])
    emb = np.array([[0.0, 0.0] if p.startswith("a cat") else [10.0, 0.0] for p in prompts])
    emb = emb + np.array([shift if "warm" in p else 0 * shift for p in prompts])
    effects = steer.PhraseEffects.fit(prompts, emb, vocab, ridge=1e-6)
    np.testing.assert_allclose(effects.shifts[0], shift, atol=1e-5)
    np.testing.assert_allclose(effects.base_means, [[0, 0], [10, 0]], atol=1e-5)


def test_a_base_prompt_holding_a_logged_phrase_is_anchored_on_its_base_moved_by_that_phrase():
    # the log keeps "a cat" without its phrases: "a cat, warm light" once fell back to an average of bases
    vocab = steer.Vocabulary.from_dict({"attributes": {"light": ["warm light"]}})
    prompts = ["a cat"] * 4 + ["a cat, warm light"] * 4 + ["a dog"] * 4
    emb = np.array([[0.0, 0.0]] * 4 + [[0.0, 1.0]] * 4 + [[10.0, 0.0]] * 4)
    effects = steer.PhraseEffects.fit(prompts, emb, vocab, ridge=1e-6)
    anchors, logged = effects.anchors("a cat, Warm  Light")
    assert logged and np.allclose(anchors, [[0.0, 1.0]], atol=1e-4)
    assert np.allclose(effects.anchors("a bird")[0], effects.base_means, atol=1e-9)  # unknown: every base


def test_phrases_differing_in_case_or_spacing_are_one_phrase():
    for twin in ("Golden Hour Light", "golden  hour light"):
        with pytest.raises(steer.InputError, match="appears twice"):
            steer.Vocabulary.from_dict({"attributes": {"light": ["golden hour light"], "mood": [twin]}})
    vocab = steer.Vocabulary.from_dict({"attributes": {"light": ["golden hour light"], "view": ["close-up"]}})
    assert vocab.set_by("a cat,  Golden  Hour Light ")[1] == {"light": "golden hour light"}


def test_a_log_spelling_a_phrase_another_way_teaches_that_phrase():
    # "a cat, Warm  Light" stayed a base of its own: the phrase learnt no shift from it
    vocab = steer.Vocabulary.from_dict({"attributes": {"light": ["warm light"]}})
    prompts = ["a cat"] * 4 + ["a cat, Warm  Light"] * 4
    emb = np.array([[0.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    effects = steer.PhraseEffects.fit(prompts, emb, vocab, ridge=1e-6)
    assert list(effects.bases) == ["a cat"] and np.allclose(effects.shifts[0], [0.0, 1.0], atol=1e-4)


def test_predicted_phrase_gains_follow_the_true_gains_of_each_person(steer_world, sim, sim_effects):
    from pamela_lite.model import PersonalScorer

    ds = worlds.dataset(steer_world)
    model = PersonalScorer(n_components=8, n_prototypes=8, factors=4, head_trees=20, n_folds=2, n_threads=1)
    model.fit(ds.split("train"), ds.embeddings, ds.scale)
    vocab, base, fresh = steer.Vocabulary.load(), steer_world.images["prompt"][0], list(range(5000, 5016))
    corr = []
    for k, user in enumerate(model.users_[:6]):
        ranking = sim_effects.propose(steer.PersonalObjective(model, model.user_states_[k]), vocab, base).ranking
        before = sim.true_utility(user, [base] * 16, fresh).mean()
        truth = [sim.true_utility(user, [f"{base}, {row['phrase']}"] * 16, fresh).mean() - before for row in ranking]
        corr.append(np.corrcoef([row["predicted_gain"] for row in ranking], truth)[0, 1])
    assert np.mean(corr) > 0.4


def test_proposing_calls_no_generator_and_the_search_renders_the_proposal_first():
    prompts, emb = toy_log()
    effects = steer.PhraseEffects.fit(prompts, emb, VOCAB)
    proposal = effects.propose(first_coordinate, VOCAB, "a cat")     # no generator is even passed
    assert proposal.prompt == "a cat, warm light, low angle"
    assert [r["phrase"] for r in proposal.ranking[:2]] == ["low angle", "warm light"]
    gen = ToyGenerator()
    res = steer.search("prompt_prior", gen, first_coordinate, VOCAB, "a cat", budget=2, seeds_per_prompt=2,
                       effects=effects)
    assert res.calls == 2 and res.prompt == proposal.prompt and res.trajectory[0]["proposed"]
    assert res.as_dict()["proposed"]["ranking"][0]["phrase"] == "low angle"


def test_prompt_prior_checks_the_proposal_against_the_base_and_keeps_the_better():
    # Effects learnt from a log that lies (shifts negated): the proposal is the worst prompt,
    # and on the same seeds the base beats it, so the search falls back.
    prompts, emb = toy_log()
    effects = steer.PhraseEffects.fit(prompts, -emb, VOCAB)
    res = steer.search("prompt_prior", ToyGenerator(), first_coordinate, VOCAB, "a cat", budget=4,
                       seeds_per_prompt=2, effects=effects)
    assert res.proposal.prompt == "a cat, cold light, high angle"
    assert res.prompt == "a cat" and res.calls == 4


def test_prompt_prior_without_phrase_effects_is_refused():
    with pytest.raises(steer.InputError, match="phrase effects"):
        steer.search("prompt_prior", ToyGenerator(), first_coordinate, VOCAB, "a cat", budget=8)


def test_phrases_the_log_never_saw_get_no_predicted_gain_and_come_last():
    effects = steer.PhraseEffects.fit(["a cat, warm light", "a cat"], np.array([[1.0, 0.0], [0.0, 0.0]]), VOCAB)
    ranking = effects.propose(first_coordinate, VOCAB, "a cat").ranking
    assert ranking[0]["phrase"] == "warm light" and ranking[0]["predicted_gain"] > 0
    assert all(row["predicted_gain"] is None for row in ranking[1:])


def test_phrase_effects_file_round_trips(tmp_path):
    prompts, emb = toy_log()
    effects = steer.PhraseEffects.fit(prompts, emb, VOCAB)
    back = steer.PhraseEffects.load(effects.save(tmp_path / "effects.npz"))
    np.testing.assert_array_equal(back.shifts, effects.shifts)
    np.testing.assert_array_equal(back.base_means, effects.base_means)
    assert back.phrases == effects.phrases and back.bases == effects.bases
    assert back.propose(first_coordinate, VOCAB, "a cat").ranking == effects.propose(first_coordinate, VOCAB,
                                                                                      "a cat").ranking


def test_simulated_log_leaves_out_the_steered_bases(sim):
    vocab = steer.Vocabulary.load()
    steered = set(sim.world.images["prompt"].unique().to_list()[:150])
    prompts, emb = sim.past_generations(vocab, n_bases=40, prompts_per_base=3, exclude=steered)
    phrases = {p for _, ps in vocab.attributes for p in ps}
    bases = {steer.split_prompt(p, phrases)[0] for p in prompts}
    assert len(bases) == 40 and not bases & steered and emb.shape == (120, sim.dim)


# ----------------------------------------------------------------------------- command line


def _log(tmp_path, dataset, rows: int = 200):
    """A past-generation log on the test world's images: prompt, image_id (+ its embeddings file)."""
    vocab = steer.Vocabulary.load()
    rng = np.random.default_rng(1)
    ids = dataset.embeddings.ids.to_list()[:rows]
    prompts = [vocab.render(f"a picture {k % 20}", vocab.random_choice(rng)) for k in range(rows)]
    pl.DataFrame({"prompt": prompts, "image_id": ids}).write_csv(tmp_path / "log.csv")
    write_embeddings(tmp_path / "log_emb.parquet", ids, dataset.embeddings.matrix[:rows])
    return tmp_path / "log.csv", tmp_path / "log_emb.parquet"


def test_cli_fits_phrase_effects_from_a_log_and_reuses_them(fitted, dataset, tmp_path):
    model = fitted.save(tmp_path / "model")
    log, emb = _log(tmp_path, dataset)
    common = ["--model", model, "--user", fitted.users_[0], "--prompt", "a cat", "--generator", "stub",
              "--budget", "8", "--seeds-per-prompt", "2", "--method", "prompt_prior", "--no-plot", "--quiet"]
    out = cli("steer", *common, "--history", log, "--history-embeddings", emb, "--out", tmp_path / "a")
    assert out.returncode == 0, out.stderr
    payload = json.loads((tmp_path / "a" / "steer.json").read_text())
    proposed = payload["results"][0]["proposed"]
    assert len(proposed["ranking"]) == 34 and payload["results"][0]["trajectory"][0]["proposed"]
    again = cli("steer", *common, "--phrase-effects", tmp_path / "a" / "phrase_effects.npz", "--out", tmp_path / "b")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "b" / "steer.json").read_text())["results"][0]["proposed"] == proposed


def test_cli_reusing_phrase_effects_in_their_own_output_folder_keeps_them_and_other_files(fitted, dataset, tmp_path):
    # --out replaced the whole folder: the phrase effects it had just read, and a user's notes, were deleted
    model = fitted.save(tmp_path / "model")
    log, emb = _log(tmp_path, dataset)
    common = ["--model", model, "--user", fitted.users_[0], "--prompt", "a cat", "--generator", "stub",
              "--budget", "8", "--seeds-per-prompt", "2", "--method", "prompt_prior", "--quiet", "--out", tmp_path / "s"]
    assert cli("steer", *common, "--history", log, "--history-embeddings", emb).returncode == 0
    (tmp_path / "s" / "notes.txt").write_text("mine")
    effects = (tmp_path / "s" / "phrase_effects.npz").read_bytes()
    again = cli("steer", *common, "--phrase-effects", tmp_path / "s" / "phrase_effects.npz", "--no-plot")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "s" / "phrase_effects.npz").read_bytes() == effects
    assert (tmp_path / "s" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "s" / "steer.png").exists()  # the plot of the run before does not outlive it


@pytest.mark.parametrize("case, problem", [
    ("no_prompt_column", "missing column(s) prompt"),
    ("unknown_image", "have no embedding"),
    ("no_effects", "needs the prompt-side model"),
    ("not_npz", "not a phrase-effects .npz"),
    ("no_log_embeddings", "needs --history-embeddings"),
    ("no_vocabulary_phrase", "no prompt of the log holds a phrase"),
    ("wrong_dimension", "phrase effects of dimension 2"),
])
def test_cli_bad_log_input_exits_2_with_one_line(fitted, dataset, tmp_path, case, problem):
    model = fitted.save(tmp_path / "model")
    log, emb = _log(tmp_path, dataset, rows=40)
    frame = pl.read_csv(log)
    extra = {"no_prompt_column": ["--history", tmp_path / "x.csv", "--history-embeddings", emb],
             "unknown_image": ["--history", tmp_path / "x.csv", "--history-embeddings", emb],
             "no_effects": [],
             "not_npz": ["--phrase-effects", tmp_path / "x.npz"],
             "no_log_embeddings": ["--history", log],
             "no_vocabulary_phrase": ["--history", tmp_path / "x.csv", "--history-embeddings", emb],
             "wrong_dimension": ["--phrase-effects", tmp_path / "small.npz"]}[case]
    if case == "no_prompt_column":
        frame.rename({"prompt": "text"}).write_csv(tmp_path / "x.csv")
    if case == "unknown_image":
        frame.with_columns(pl.lit("nope").alias("image_id")).write_csv(tmp_path / "x.csv")
    (tmp_path / "x.npz").write_text("not an npz")
    if case == "no_vocabulary_phrase":
        frame.with_columns(pl.lit("a cat, purple").alias("prompt")).write_csv(tmp_path / "x.csv")
    steer.PhraseEffects.fit(*toy_log(), VOCAB).save(tmp_path / "small.npz")
    out = cli("steer", "--model", model, "--user", fitted.users_[0], "--prompt", "a cat", "--generator", "stub",
              "--budget", "8", "--method", "prompt_prior", "--out", tmp_path / "o", *extra)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and problem in out.stderr, out.stderr
    assert not (tmp_path / "o").exists()


class PromptNoise(ToyGenerator):
    """The toy generator with seed noise that differs from prompt to prompt (no common numbers)."""

    def __call__(self, prompts, seeds):
        clean = ToyGenerator()(prompts, seeds)
        return clean + self.noise * np.array([np.random.default_rng([zlib.crc32(p.encode()), s]).standard_normal(2)
                                              for p, s in zip(prompts, seeds)])


def test_prompt_prior_trusts_a_log_that_predicts_well_over_lucky_seeds():
    # Noisy images, a correct log: comparing raw means on one seed wanders off the best prompt;
    # the blend sees that observations stray from predictions by no more than seed noise.
    prompts, emb = toy_log()
    effects = steer.PhraseEffects.fit(prompts, emb, VOCAB)
    found = [steer.search("prompt_prior", PromptNoise(noise=1.0), first_coordinate, VOCAB, "a cat", budget=40,
                          seeds_per_prompt=2, seeds=list(range(10 * k, 10 * k + 40)), effects=effects).prompt
             for k in range(10)]
    assert found == ["a cat, warm light, low angle"] * 10
