"""Steering for one person vs for another person vs the population vs not at all (issue 10).

    python benchmarks/steering.py                 # demo + lowvar, 100 people each, 2 simulators (~32 min)
    python benchmarks/steering.py --quick         # small worlds, results to benchmarks/results/quick/
    python benchmarks/steering.py --worlds demo,lowvar,hetero --users 60

For each world of the zoo (``pamela_lite.worlds``): fit ``PersonalScorer`` on the world's
train split (validation: val_seen), wrap the world in the simulated generator
(``pamela_lite.steer_sim``: edit directions drawn independently of the taste and principal
bases, 25% of edit-caused variance shared, seed noise as large as one edit; twice: with additive
edits and with edits half of whose move depends on the base image, ``--base-dependence``), and
for each of N seen people steer one base prompt (a random catalogue prompt) four ways:

* **self**: the search driven by the person's own predicted utility;
* **other**: the same search driven by another random person's predicted utility;
* **population**: the same search driven by the population head (global steering);
* **unsteered**: the base prompt.

The headline search is greedy coordinate search (stated before running); best-of-N, the
Thompson bandit and the prompt-side model (``prompt_prior``) are reported for "self" beside it.
The prompt-side model learns what each phrase does to the embedding from a log of earlier
generations (``SimulatedGenerator.past_generations``: other base prompts than the ones steered
here, seeds 1000000.., disjoint from the choosing and the judging seeds), proposes a prompt for
the person before any image is generated (budget 0: reported for self, the other person and the
population head), then spends the budget checking and improving it; it is also run for the other
person and the population head, so that self vs others compares like with like. Prompts are
chosen on seeds 0.. and judged
on 32 fresh seeds (10000..; ``--fresh-seeds``) by the person's TRUE utility from the world's truth, never by the
scorer; gains are in units of the person's SD of true utility over the catalogue. Paired win
rates compare conditions person by person; Elo (Bradley-Terry over all paired outcomes) is a
secondary view. The bandit's uncertainty is checked first: coverage of nominal intervals of
the scorer's posterior on validation ratings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine, machine_lines, results_dir  # noqa: E402

from pamela_lite import steer, worlds  # noqa: E402
from pamela_lite._atomic import write_text  # noqa: E402
from pamela_lite.data import Embeddings  # noqa: E402
from pamela_lite.model import PersonalScorer  # noqa: E402
from pamela_lite.steer_sim import SimulatedGenerator  # noqa: E402

CONDITIONS = ("self", "other", "population", "unsteered")
HEADLINE = "greedy"
FRESH = steer.fresh_seeds(32, range(10_000))     # 10000..10031; searches choose on seeds 0.. (--fresh-seeds)
QUICK = dict(n_users=80, n_images=1200)
TINY = dict(n_users=50, n_images=400)      # --tiny (with --quick): the test suite's smoke run
TWO_BUDGET = 128
LOG = dict(n_bases=200, prompts_per_base=8)   # the past-generation log: 1600 images
Z = {0.5: 0.674, 0.8: 1.2816, 0.9: 1.6449}


# ----------------------------------------------------------------------------- helpers


def size(args) -> dict:
    return TINY if args.tiny else QUICK if args.quick else {}


def train_rows(world, user) -> pl.DataFrame:
    return world.ratings.filter((pl.col("participant_id") == user) & (pl.col("split") == "train"))


def posterior_of(model, world, emb, user, row, noise_var=None):
    rows = train_rows(world, user)
    return steer.state_posterior(model, model.user_states_[row], emb.take(rows["image_id"]),
                                 rows["original_score"].to_numpy(), noise_var)


def calibration(model, world, emb, users, rng, draws: int = 64) -> dict:
    """Coverage of the scorer's posterior intervals on val_seen ratings (seen people).

    Three checks per nominal level: the noise-free expected rating of each validation pair
    (the world's truth) inside the posterior interval of the predicted rating; the difference
    of expected ratings of two validation images of one person inside the interval of the
    predicted difference (what a search compares); each observed rating inside the predictive
    interval (posterior + rating noise).
    """
    val = world.ratings.filter(pl.col("split") == "val_seen").join(
        world.truth.select("participant_id", "image_id", "expected_rating"), on=["participant_id", "image_id"])
    index = {u: k for k, u in enumerate(model.users_)}
    hits = {lvl: {"level": [], "difference": [], "rating": []} for lvl in Z}
    width, ratios = [], []
    for user in users:
        rows = val.filter(pl.col("participant_id") == user)
        if rows.height < 4:
            continue
        post = posterior_of(model, world, emb, user, index[user])
        obj = steer.PersonalObjective(model, post.mean, post, draws, seed=int(rng.integers(1 << 30)))
        s = obj(emb.take(rows["image_id"]))                 # (n, 1 + K)
        lo_, hi_ = model.fitted_.scale
        point, samples = np.clip(s[:, 0], lo_, hi_), np.clip(s[:, 1:], lo_, hi_)
        sd = samples.std(1)
        truth = rows["expected_rating"].to_numpy()
        rating = rows["original_score"].to_numpy().astype(float)
        perm = rng.permutation(rows.height)
        a, b = perm[: rows.height // 2], perm[rows.height // 2: 2 * (rows.height // 2)]
        dsd = (samples[a] - samples[b]).std(1)
        width.append(float(np.mean(sd)))
        ratios += list(np.abs((truth[a] - truth[b]) - (point[a] - point[b])) / np.maximum(dsd, 1e-9))
        for lvl, z in Z.items():
            hits[lvl]["level"] += list(np.abs(truth - point) <= z * sd)
            hits[lvl]["difference"] += list(np.abs((truth[a] - truth[b]) - (point[a] - point[b])) <= z * dsd)
            hits[lvl]["rating"] += list(np.abs(rating - point) <= z * np.sqrt(sd ** 2 + post.noise_var))
    return {"nominal": list(Z), "coverage": {k: [float(np.mean(hits[lvl][k])) for lvl in Z]
                                             for k in ("level", "difference", "rating")},
            "mean_posterior_sd": float(np.mean(width)), "users": len(width),
            # how much wider the difference intervals would have to be to cover 80% as nominal
            "inflation_for_80pct_differences": float(np.quantile(ratios, 0.8) / Z[0.8])}


def pick_gain(gen, vocab, base, choice, user, base_true, sd):
    prompt = vocab.render(base, choice)
    return float((gen.true_utility(user, [prompt] * len(FRESH), FRESH).mean() - base_true) / sd)


def bradley_terry(wins: np.ndarray, iters: int = 500) -> np.ndarray:
    """Elo ratings (mean 1000) from a matrix of wins[i, j] (i beat j; ties counted half)."""
    n = len(wins)
    p = np.ones(n)
    games = wins + wins.T
    for _ in range(iters):
        for i in range(n):
            denom = sum(games[i, j] / (p[i] + p[j]) for j in range(n) if j != i)
            p[i] = max(wins[i].sum(), 1e-9) / max(denom, 1e-12)
        p /= np.exp(np.mean(np.log(p)))
    return 1000 + 400 * np.log10(p)


def bootstrap_ci(values: np.ndarray, rng, n: int = 2000) -> tuple[float, float]:
    idx = rng.integers(0, len(values), (n, len(values)))
    means = values[idx].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


# ----------------------------------------------------------------------------- one world


def run_world(name: str, args, rng) -> list[dict]:
    """One fit of the world, then the steering comparison under each simulator (--base-dependence),
    on the same people, base prompts and "other" people."""
    cfg = worlds.default_config(name, **(size(args)))
    world = worlds.make(name, cfg)
    ds = worlds.dataset(world)
    t0 = time.perf_counter()
    model = PersonalScorer(n_threads=1, random_state=0).fit(ds.split("train"), ds.embeddings, ds.scale,
                                                            validation=ds.split("val_seen"))
    fit_s = time.perf_counter() - t0
    log(f"{name}: fitted in {fit_s:.1f}s")
    emb = Embeddings(world.images["image_id"], world.embeddings)
    truth_rows = set(world.users["participant_id"].to_list())
    seen = [u for u in model.users_ if u in truth_rows]
    users = [seen[k] for k in rng.choice(len(seen), min(args.users, len(seen)), replace=False)]
    cal = calibration(model, world, emb, users, rng)
    log(f"{name}: calibration {cal['coverage']}")
    prompts = world.images["prompt"].to_list()
    base_rows = rng.choice(len(prompts), len(users), replace=False)
    others = [users[(n + 1 + int(rng.integers(len(users) - 1))) % len(users)] for n in range(len(users))]
    out = []
    for k, dependence in enumerate(args.base_dependence):
        # each simulator's own stream (bootstraps, search seeds): the runs do not depend on each other's order
        own = np.random.default_rng([args.seed, k])
        out.append({**steer_world(name, world, model, users, base_rows, others, dependence, args, own),
                    "config": dict(cfg.__dict__), "calibration": cal, "fit_seconds": round(fit_s, 1)})
    return out


def steer_world(name, world, model, users, base_rows, others, dependence: float, args, rng) -> dict:
    """The four conditions for each person (paired with `others[n]`), under a simulator with the
    given base dependence."""
    t0 = time.perf_counter()
    gen = SimulatedGenerator(world, edit_sd=args.edit_sd, shared_share=args.shared_share,
                             seed_ratio=args.seed_ratio, base_dependence=dependence)
    shares = gen.shares().as_dict()
    vocab = steer.Vocabulary.load()
    emb = Embeddings(world.images["image_id"], world.embeddings)
    index = {u: k for k, u in enumerate(model.users_)}
    budgets = args.budgets
    pop = steer.PopulationObjective(model)
    catalogue = world.embeddings
    prompts = world.images["prompt"].to_list()
    # The prompt-side model's log never holds a base prompt steered here (nor shares a seed).
    log_prompts, log_emb = gen.past_generations(vocab, exclude={prompts[k] for k in base_rows}, **LOG)
    effects = steer.PhraseEffects.fit(log_prompts, log_emb, vocab)
    recovery = [float(np.dot(effects.shifts[k], gen.direction(p)) / np.linalg.norm(effects.shifts[k])
                      / np.linalg.norm(gen.direction(p))) for k, p in enumerate(effects.phrases)]
    records, cos = [], []
    for n, user in enumerate(users):
        other = others[n]
        base = prompts[base_rows[n]]
        sd_true = gen.truth.sd(user)
        post = posterior_of(model, world, emb, user, index[user])
        me = steer.PersonalObjective(model, post.mean, post, args.samples, seed=n)
        them = steer.PersonalObjective(model, model.user_states_[index[other]], None, 0)
        sd_pred = float(np.std(steer.PersonalObjective(model, post.mean, None, 0)(catalogue)[:, 0]))
        base_true = float(gen.true_utility(user, [base] * len(FRESH), FRESH).mean())
        runs = {("self", m): me for m in ("best_of_n", "greedy", "thompson")}
        runs[("other", HEADLINE)] = them
        runs[("population", HEADLINE)] = pop
        runs[("other", "prompt_prior")] = them
        runs[("population", "prompt_prior")] = pop
        runs[("self", "prompt_prior")] = me       # last: its proposal is used below
        for (cond, method), objective in runs.items():
            res = steer.search(method, gen, objective, vocab, base, max(budgets), args.seeds_per_prompt,
                               rng_seed=1000 * n + len(records), checkpoints=budgets,
                               effects=effects if method == "prompt_prior" else None)
            for b in budgets:
                choice, pred = res.picks[b]
                records.append({"user": str(user), "condition": cond, "method": method, "budget": b,
                                "edits": len(vocab.edits(choice)),
                                "predicted_gain": (pred - res.base_predicted) / sd_pred if cond == "self" else None,
                                "realised_gain": pick_gain(gen, vocab, base, choice, user, base_true, sd_true)})
        # Budget 0: the prompt-side model's proposal alone (no image generated), for this person
        # (res is the prompt_prior run), for the other person and for the population head.
        assert res.method == "prompt_prior"
        proposals = {"self": res.proposal, "other": effects.propose(them, vocab, base),
                     "population": effects.propose(pop, vocab, base)}
        for cond, prop in proposals.items():
            records.append({"user": str(user), "condition": cond, "method": "prompt_prior", "budget": 0,
                            "edits": len(vocab.edits(prop.choice)),
                            "predicted_gain": ((prop.predicted - prop.base_predicted) / sd_pred
                                               if cond == "self" else None),
                            "realised_gain": pick_gain(gen, vocab, base, prop.choice, user, base_true, sd_true)})
        if n < 10:
            x0 = gen([base], [FRESH[0]])[0]
            x1 = gen([vocab.render(base, res.choice)], [FRESH[0]])[0]
            cos.append(float(x0 @ x1))
        if (n + 1) % 20 == 0:
            log(f"{name} (base dependence {dependence}): {n + 1}/{len(users)} people, {time.perf_counter() - t0:.0f}s")
    frame = pl.DataFrame(records)
    summary = summarise(frame, budgets, rng)
    proposal = summarise_proposals(frame.filter(pl.col("budget") == 0), rng)
    # The per-person rows stay out of the results (a megabyte); the summary holds the paired statistics.
    return {"world": name, "base_dependence": dependence, "users": len(users),
            "simulator": {**shares, "base_dependence": dependence, "edit_sd": gen.edit_sd, "step": gen.step, "tau": gen.tau, "seed_sd": gen.seed_sd,
                          "cosine_base_vs_steered_example": float(np.mean(cos)) if cos else None},
            "summary": summary, "proposal_only": proposal,
            "phrase_effects": {"log_images": len(log_prompts), "log_bases": len(effects.bases),
                               "cosine_to_simulator_direction": {"mean": float(np.mean(recovery)),
                                                                 "min": float(np.min(recovery))}},
            "seconds": round(time.perf_counter() - t0, 1)}


def summarise(frame: pl.DataFrame, budgets, rng) -> dict:
    out = {}
    for b in budgets:
        at = frame.filter(pl.col("budget") == b)

        def gains(cond, method=HEADLINE):
            if cond == "unsteered":
                users = at.filter(pl.col("condition") == "self")["user"].unique(maintain_order=True)
                return np.zeros(len(users))
            return at.filter((pl.col("condition") == cond) & (pl.col("method") == method))["realised_gain"].to_numpy()

        g = {c: gains(c) for c in CONDITIONS}
        g["self (best_of_n)"] = gains("self", "best_of_n")
        g["self (thompson)"] = gains("self", "thompson")
        for cond in ("self", "other", "population"):
            g[f"{cond} (prompt prior)"] = gains(cond, "prompt_prior")
        row = {"mean_gain": {k: float(v.mean()) for k, v in g.items()},
               "ci95": {k: bootstrap_ci(v, rng) for k, v in g.items() if k != "unsteered"}}

        def win(a, c):
            return float(np.mean((a > c) + 0.5 * (a == c)))

        row["win_rate"] = {"self > population": win(g["self"], g["population"]),
                           "self > other": win(g["self"], g["other"]),
                           "self > unsteered": win(g["self"], g["unsteered"]),
                           "population > unsteered": win(g["population"], g["unsteered"]),
                           "other > unsteered": win(g["other"], g["unsteered"]),
                           "self (thompson) > population": win(g["self (thompson)"], g["population"]),
                           "self (best_of_n) > population": win(g["self (best_of_n)"], g["population"]),
                           "self (prompt prior) > population": win(g["self (prompt prior)"], g["population"]),
                           "self (prompt prior) > self": win(g["self (prompt prior)"], g["self"]),
                           # the same method for every condition: what personalisation adds to it
                           "prompt prior: self > population": win(g["self (prompt prior)"], g["population (prompt prior)"]),
                           "prompt prior: self > other": win(g["self (prompt prior)"], g["other (prompt prior)"]),
                           "prompt prior: self > unsteered": win(g["self (prompt prior)"], g["unsteered"])}
        wins = np.zeros((4, 4))
        for i, a in enumerate(CONDITIONS):
            for j, c in enumerate(CONDITIONS):
                if i != j:
                    wins[i, j] = ((g[a] > g[c]) + 0.5 * (g[a] == g[c])).sum()
        row["elo"] = dict(zip(CONDITIONS, bradley_terry(wins).round(1).tolist()))
        sel = at.filter(pl.col("condition") == "self")
        row["predicted_vs_realised"] = {m: {"predicted": float(sel.filter(pl.col("method") == m)["predicted_gain"].mean()),
                                            "realised": float(sel.filter(pl.col("method") == m)["realised_gain"].mean())}
                                        for m in steer.METHODS}
        row["edits_in_pick"] = {m: float(sel.filter(pl.col("method") == m)["edits"].mean()) for m in steer.METHODS}
        out[str(b)] = row
    return out


def summarise_proposals(frame: pl.DataFrame, rng) -> dict:
    """Budget 0: the prompt-side model's proposals judged for each person (paired over people)."""
    g = {c: frame.filter(pl.col("condition") == c)["realised_gain"].to_numpy() for c in ("self", "other", "population")}

    def win(a, c):
        return float(np.mean((a > c) + 0.5 * (a == c)))

    return {"mean_gain": {k: float(v.mean()) for k, v in g.items()},
            "ci95": {k: bootstrap_ci(v, rng) for k, v in g.items()},
            "predicted_gain_self": float(frame.filter(pl.col("condition") == "self")["predicted_gain"].mean()),
            "edits": {k: float(frame.filter(pl.col("condition") == k)["edits"].mean()) for k in g},
            "win_rate": {"self > population": win(g["self"], g["population"]),
                         "self > other": win(g["self"], g["other"]),
                         "self > unsteered": win(g["self"], np.zeros(len(g["self"]))),
                         "population > unsteered": win(g["population"], np.zeros(len(g["population"])))}}


# ----------------------------------------------------------------------------- two people, one prompt


def two_people(args, folder: Path) -> dict:
    """The README's example: two people with different tastes steered from one prompt (demo world)."""
    cfg = worlds.default_config("demo", **(size(args)))
    world = worlds.make("demo", cfg)
    ds = worlds.dataset(world)
    model = PersonalScorer(n_threads=1, random_state=0).fit(ds.split("train"), ds.embeddings, ds.scale,
                                                            validation=ds.split("val_seen"))
    gen = SimulatedGenerator(world, edit_sd=args.edit_sd, shared_share=args.shared_share, seed_ratio=args.seed_ratio,
                             base_dependence=max(args.base_dependence))
    vocab = steer.Vocabulary.load()
    emb = Embeddings(world.images["image_id"], world.embeddings)
    index = {u: k for k, u in enumerate(model.users_)}
    # the two people whose true gradients are least alike (most different tastes), among 40
    cand = [u for u in model.users_[:40]]
    G = np.stack([gen.truth.gradients[gen.truth.row(u)] for u in cand])
    G = G / np.linalg.norm(G, axis=1, keepdims=True)
    i, j = np.unravel_index(np.argmin(G @ G.T), (len(cand), len(cand)))
    base = world.images["prompt"][0]
    out, results = {"base": base, "base_dependence": gen.base_dependence, "people": []}, []
    for user in (cand[i], cand[j]):
        post = posterior_of(model, world, emb, user, index[user])
        res = steer.search(HEADLINE, gen, steer.PersonalObjective(model, post.mean, post, args.samples), vocab, base,
                           TWO_BUDGET, args.seeds_per_prompt)
        res.objective = f"{user}"
        results.append(res)
        base_true = float(gen.true_utility(user, [base] * len(FRESH), FRESH).mean())
        gains = {}
        for who in (cand[i], cand[j]):
            bt = float(gen.true_utility(who, [base] * len(FRESH), FRESH).mean())
            gains[str(who)] = float((gen.true_utility(who, [res.prompt] * len(FRESH), FRESH).mean() - bt)
                                    / gen.truth.sd(who))
        out["people"].append({"user": str(user), "prompt": res.prompt, "edits": res.edits,
                              "predicted": res.predicted, "base_predicted": res.base_predicted,
                              "spread_taste": res.spread_taste, "spread_seed": res.spread_seed,
                              "true_gain_sd_for": gains, "base_true": base_true})
    pop = steer.search(HEADLINE, gen, steer.PopulationObjective(model), vocab, base, TWO_BUDGET, args.seeds_per_prompt)
    out["population_prompt"] = pop.prompt
    out["taste_cosine"] = float(G[i] @ G[j])
    if _can_plot():
        steer.plot(results, folder / f"{args.name}_two_people.png", f"demo world, greedy, one base prompt: '{base}'")
    return out


def _can_plot() -> bool:
    """Plots need matplotlib (the bench extra); without it the tables are still written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("matplotlib is not installed: no plots (pip install matplotlib)")
        return False
    return True


# ----------------------------------------------------------------------------- report


def plot_worlds(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5.2 * len(results), 7.2), squeeze=False)
    for col, res in enumerate(results):
        s = res["summary"]
        budgets = [int(b) for b in s]
        ax = axes[0, col]
        for cond in ("self", "self (thompson)", "self (best_of_n)", "self (prompt prior)", "other", "population"):
            ax.plot(budgets, [s[str(b)]["mean_gain"][cond] for b in budgets], marker="o", label=cond)
        ax.axhline(0, color="grey", lw=0.8, label="unsteered")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{res['world']}, base dependence {res['base_dependence']:g}: true gain, fresh seeds "
                     f"({res['users']} people)", fontsize=9)
        ax.set_xlabel("budget (generator calls)")
        ax.set_ylabel("gain in per-person SD of true utility")
        ax.legend(fontsize=7)
        ax = axes[1, col]
        for m in steer.METHODS:
            ax.plot(budgets, [s[str(b)]["predicted_vs_realised"][m]["predicted"] for b in budgets], ls="--", marker=".",
                    label=f"{m}: predicted")
            ax.plot(budgets, [s[str(b)]["predicted_vs_realised"][m]["realised"] for b in budgets], marker="o",
                    label=f"{m}: realised")
        ax.set_xscale("log", base=2)
        ax.set_title("self: predicted (choosing seeds) vs realised (fresh seeds, truth)", fontsize=9)
        ax.set_xlabel("budget (generator calls)")
        ax.set_ylabel("gain in per-person SD")
        ax.legend(fontsize=7)
    fig.tight_layout()
    from pamela_lite._atomic import atomic_file

    with atomic_file(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def markdown(payload: dict) -> str:
    lines = ["# Steering for one person (issue 10)", "",
             f"`{payload['command']}` — {machine_lines(payload['machine'])}", "",
             "Simulated generator (`pamela_lite.steer_sim`): edit directions random and independent of the taste "
             "and principal bases; gains judged by the people's TRUE utility on "
             f"{payload['fresh_seeds']} fresh seeds, in per-person SD "
             f"units. Headline search: **{HEADLINE}**; {payload['seeds_per_prompt']} seeds per prompt. Simulators "
             "(each world runs under every one, on the same people, base prompts and other people): "
             + "; ".join(edits_kind(b) for b in payload["settings"]["base_dependence"])
             + " (base dependence: the share of a phrase's move drawn afresh for each base image; 0 is what the "
               "prompt-side model assumes).", ""]
    for res in payload["worlds"]:
        sim, cal = res["simulator"], res["calibration"]
        lines += [f"## {res['world']}, {edits_kind(res['base_dependence'])} ({res['users']} people, "
                  f"{res['seconds']} s after a {res['fit_seconds']} s fit)", "",
                  f"Simulator: shared share of edit variance {sim['shared_share']:.2f}, seed/edit variance "
                  f"{sim['seed_to_edit']:.2f}, one edit = {sim['edit_sd_units']:.2f} SD, linear truth map R^2 "
                  f"{sim['linear_r2']:.3f}, cosine base vs steered image {sim['cosine_base_vs_steered_example']:.2f}.", "",
                  f"Posterior calibration on val_seen ({cal['users']} people; nominal {cal['nominal']}): "
                  f"expected rating {fmt(cal['coverage']['level'])}, differences {fmt(cal['coverage']['difference'])}, "
                  f"observed ratings (with noise) {fmt(cal['coverage']['rating'])}; intervals of differences would "
                  f"need to be {cal['inflation_for_80pct_differences']:.1f}x wider for nominal 80% coverage.", "",
                  "| budget | self | self (thompson) | self (best-of-N) | self (prompt prior) | other | population | "
                  "self > pop | self > other | self > unsteered | pop > unsteered | prompt prior > pop | "
                  "Elo self / other / pop / none |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for b, row in res["summary"].items():
            g, w, e = row["mean_gain"], row["win_rate"], row["elo"]
            lines.append(f"| {b} | {g['self']:+.3f} | {g['self (thompson)']:+.3f} | {g['self (best_of_n)']:+.3f} | "
                         f"{g['self (prompt prior)']:+.3f} | "
                         f"{g['other']:+.3f} | {g['population']:+.3f} | {w['self > population']:.2f} | "
                         f"{w['self > other']:.2f} | {w['self > unsteered']:.2f} | {w['population > unsteered']:.2f} | "
                         f"{w['self (prompt prior) > population']:.2f} | "
                         f"{e['self']:.0f} / {e['other']:.0f} / {e['population']:.0f} / {e['unsteered']:.0f} |")
        lines += ["", "Predicted (choosing seeds, scorer) vs realised (fresh seeds, truth) gain of self-steering, SD units:", "",
                  "| budget | " + " | ".join(steer.METHODS) + " |", "|---:|" + "---|" * len(steer.METHODS)]
        for b, row in res["summary"].items():
            pv = row["predicted_vs_realised"]
            lines.append(f"| {b} | " + " | ".join(f"{pv[m]['predicted']:+.2f} → {pv[m]['realised']:+.2f}"
                                                   for m in steer.METHODS) + " |")
        po, pe = res["proposal_only"], res["phrase_effects"]
        gm, wr = po["mean_gain"], po["win_rate"]
        lines += ["", f"Prompt-side model alone, budget 0 (no image generated): phrase effects fitted on a log of "
                      f"{pe['log_images']} earlier generations ({pe['log_bases']} other base prompts, disjoint seeds); "
                      f"fitted shift vs the simulator's direction, cosine {pe['cosine_to_simulator_direction']['mean']:.3f} "
                      f"(min {pe['cosine_to_simulator_direction']['min']:.3f}). Proposals judged for the person:", "",
                  "| proposed for | true gain (95% CI) | edits |", "|---|---:|---:|"]
        for k in ("self", "other", "population"):
            lo, hi = po["ci95"][k]
            lines.append(f"| {k} | {gm[k]:+.3f} ({lo:+.2f}..{hi:+.2f}) | {po['edits'][k]:.1f} |")
        lines += ["", f"Self's proposal: predicted {po['predicted_gain_self']:+.2f} SD, realised {gm['self']:+.2f}; "
                      f"wins over the population's proposal for {wr['self > population']:.0%} of people, over the "
                      f"other person's for {wr['self > other']:.0%}, over the unsteered base for "
                      f"{wr['self > unsteered']:.0%}."]
        small = res["summary"][min(res["summary"], key=int)]
        lines += [f"At budget {min(res['summary'], key=int)}, prompt_prior realises "
                  f"{small['mean_gain']['self (prompt prior)']:+.3f} vs greedy {small['mean_gain']['self']:+.3f} "
                  f"(better for {small['win_rate']['self (prompt prior) > self']:.0%} of people)."
                  + (" Caveat: with additive edits, the same on every base, the simulator is what the prompt-side "
                     "model assumes, so these are the best a log can give"
                     + ("; see the base-dependent rows." if max(payload["settings"]["base_dependence"]) > 0 else ".")
                     if res["base_dependence"] == 0 else ""), "",
                  "The prompt-side model steering every condition (the same method for self, the other person and "
                  "the population head: what personalisation adds to it):", "",
                  "| budget | self | other | population | self > pop | self > other | self > unsteered |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for b, row in res["summary"].items():
            g, w = row["mean_gain"], row["win_rate"]
            lines.append(f"| {b} | {g['self (prompt prior)']:+.3f} | {g['other (prompt prior)']:+.3f} | "
                         f"{g['population (prompt prior)']:+.3f} | {w['prompt prior: self > population']:.2f} | "
                         f"{w['prompt prior: self > other']:.2f} | {w['prompt prior: self > unsteered']:.2f} |")
        lines.append("")
    if payload.get("two_people"):
        tp = payload["two_people"]
        lines += [f"## Two people, one prompt (demo world, {edits_kind(tp['base_dependence'])}, greedy, budget "
                  f"{TWO_BUDGET})", "", f"Base: `{tp['base']}`", ""]
        for p in tp["people"]:
            lines.append(f"- **{p['user']}** → `{p['prompt']}` (predicted {p['predicted']:.2f} vs base "
                         f"{p['base_predicted']:.2f}); true gain in SD for each person: "
                         + ", ".join(f"{k} {v:+.2f}" for k, v in p["true_gain_sd_for"].items()))
        lines.append(f"- population head → `{tp['population_prompt']}`")
        lines.append("")
    return "\n".join(lines)


def edits_kind(dependence: float) -> str:
    return ("additive edits (base dependence 0)" if dependence == 0
            else f"base-dependent edits (base dependence {dependence:g})")


def fmt(values) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def main(argv=None) -> int:
    global FRESH  # the judging seeds every helper reads: set once from --fresh-seeds, before any search
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", default="demo,lowvar")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--budgets", default="8,16,32,64,128")
    parser.add_argument("--seeds-per-prompt", type=int, default=4)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--edit-sd", type=float, default=0.35)
    parser.add_argument("--shared-share", type=float, default=0.25)
    parser.add_argument("--seed-ratio", type=float, default=1.0)
    parser.add_argument("--base-dependence", default="0,0.5",
                        help="simulators to run, by the share of a phrase's move that depends on the base image "
                             "(0: additive edits, the same on every base; comma-separated)")
    parser.add_argument("--fresh-seeds", type=int, default=len(FRESH),
                        help="seeds every chosen prompt is judged on, after those it was chosen on (more: "
                             "less judging noise in the win rates)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="steering",
                        help="results file stem in benchmarks/results/ (another name keeps the main results, "
                             "e.g. for a confirmation run)")
    args = parser.parse_args(argv)
    if args.fresh_seeds < 1:
        parser.error(f"--fresh-seeds must be at least 1, not {args.fresh_seeds}")
    args.budgets = [int(b) for b in args.budgets.split(",")]
    FRESH = steer.fresh_seeds(args.fresh_seeds, range(10_000))
    args.base_dependence = [float(b) for b in args.base_dependence.split(",")]
    if args.tiny:
        args.quick, args.users, args.budgets = True, min(args.users, 4), [8, 16]
    if args.quick:
        args.users = min(args.users, 30)
    folder = results_dir(args.quick)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    command = "python benchmarks/steering.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = [res for name in args.worlds.split(",") for res in run_world(name, args, rng)]
    payload = {"command": command.strip(), "machine": machine(), "headline_method": HEADLINE,
               "seeds_per_prompt": args.seeds_per_prompt, "fresh_seeds": len(FRESH),
               "settings": {k: v for k, v in vars(args).items()}, "worlds": results,
               "two_people": two_people(args, folder)}
    if _can_plot():
        plot_worlds(results, folder / f"{args.name}.png")
    write_text(folder / f"{args.name}.json", json.dumps(payload, indent=1, default=float))
    write_text(folder / f"{args.name}.md", markdown(payload))
    log(markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
