"""Accuracy benchmark: pamela_lite against baselines and a deep personalized model.

    python benchmarks/accuracy.py              # the PAMELA-shaped demo world (about 4-5 min with the deep searches)
    python benchmarks/accuracy.py --quick      # a smaller world, fewer epochs (under 2 min), to results/quick/
    python benchmarks/accuracy.py --data /path/to/PAMELA --embeddings /path/to/embeddings.parquet

Rows: global mean, user mean, population head (LAION-style linear head), k-NN on embeddings
per user, MF only, pamela_lite (full: MF + linear taste + LightGBM residual head) and two deep
baselines (benchmarks/deep_baseline.py: a few-shot set model and an MLP + learned user
embedding, each chosen by a seeded search on val_seen; skipped with a clear note when torch is
absent). test_seen and test_unseen at k = 0, 10, 50; per-user SROCC
with a 95% bootstrap interval over users, PLCC, pairwise accuracy, MAE, RMSE, fit time and
model size; the demo's noise ceiling.

Beside the main table (pamela_lite.metrics has the definitions):

* ranking and regret, per model, split and k: per-user Kendall tau-b; the personalization share
  (per-user SROCC of the rating less the image's leave-one-out mean over the split's other
  raters against the score less the population head's score on the same row; the population
  head is 0 by construction); best-of-N regret, in rating units and in units of each user's
  rating SD;
* a paired bootstrap over users of pamela_lite (full) against every other model on the same
  split and k: mean per-user SROCC difference, seeded 95% interval (2000 resamples), one-sided p;
* on test_unseen at k = 0, MAE and per-user SROCC of pamela_lite (full) and the population head
  per gender, nationality and age band (a note instead when the data has no demographics);
* leave-users-out cross-validation beside the official split (``world_eval.cross_validate_users``):
  the seen users in 5 seeded folds, the model refitted without each fold, every seen user scored
  once as a new user at k = 0, 10 and 100 (mean over 10 context draws), pamela_lite (full)
  against the population head with a paired bootstrap — the official split has only a handful
  of test_unseen people.

Results go to benchmarks/results/accuracy.{md,json} with two plots (--quick: to
benchmarks/results/quick/, which git ignores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import dir_size, results_dir, has_torch, log, machine, machine_lines, save  # noqa: E402

from pamela_lite.data import Scale, load_dataset  # noqa: E402
from pamela_lite.demo import DemoConfig, world_dataset  # noqa: E402
from pamela_lite.protocol import ceiling_rows, evaluation_cases, score_rows  # noqa: E402
from pamela_lite.fit import BASELINES  # noqa: E402
from pamela_lite.metrics import (age_band, evaluate_scores, group_errors, paired_bootstrap,  # noqa: E402
                                 paired_differences, per_user, ranking_metrics)
from pamela_lite.model import PersonalScorer  # noqa: E402
from pamela_lite.world_eval import cross_validate_users  # noqa: E402

FULL, POPULATION, CEILING = "pamela_lite (full)", "population head", "noise ceiling"
# k = 0 groups on test_unseen: (label, column it needs, group expression)
DEMOGRAPHIC_GROUPS = (("gender", "gender", pl.col("gender")), ("nationality", "nationality", pl.col("nationality")),
                      ("age band", "age", age_band()))


class KNNBaseline:
    """Per user: similarity-weighted mean of the user's ratings on their nearest rated images."""

    def __init__(self, neighbours: int = 20, shrinkage: float = 5.0):
        self.neighbours, self.shrinkage = neighbours, shrinkage

    def fit(self, train: pl.DataFrame, embeddings, validation=None) -> "KNNBaseline":
        self.embeddings_ = embeddings
        self.mean_ = float(train["rating"].mean())
        self.rated_ = {p[0]: part for p, part in train.group_by("participant_id")}
        self.users_ = list(self.rated_)
        return self

    def fold_in(self, context: pl.DataFrame, embeddings, users: pl.DataFrame | None = None) -> dict:
        states = {p[0]: part for p, part in context.group_by("participant_id")}
        for p in (users["participant_id"].to_list() if users is not None else []):
            states.setdefault(p, context.head(0))
        return states

    def _unit(self, ids) -> np.ndarray:
        x = self.embeddings_.take(ids).astype(np.float64)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def predict(self, pairs: pl.DataFrame, embeddings, states: dict | None = None) -> np.ndarray:
        out = np.full(pairs.height, self.mean_)
        indexed = pairs.with_row_index("_row")
        for (user,), part in indexed.group_by("participant_id"):
            rated = (states or {}).get(user, self.rated_.get(user))
            if rated is None or rated.height == 0:
                continue
            r = rated["rating"].to_numpy().astype(np.float64)
            user_mean = (r.sum() + self.shrinkage * self.mean_) / (len(r) + self.shrinkage)
            sim = self._unit(part["image_id"]) @ self._unit(rated["image_id"]).T
            k = min(self.neighbours, sim.shape[1])
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            w = np.maximum(np.take_along_axis(sim, top, axis=1), 0) + 1e-9
            out[part["_row"].to_numpy()] = user_mean + (w * (r[top] - user_mean)).sum(1) / w.sum(1)
        return out


class Scorer:
    """PersonalScorer with the benchmark's fit signature."""

    def __init__(self, scale: Scale, seed: int, **switches):
        self.model = PersonalScorer(random_state=seed, **switches)
        self.scale = scale

    def fit(self, train, embeddings, validation=None):
        self.model.fit(train, embeddings, self.scale, validation=validation)
        return self

    def __getattr__(self, name):
        return getattr(self.model, name)

    def size_bytes(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            self.model.save(Path(tmp) / "m")
            return dir_size(Path(tmp) / "m")


def build_models(dataset, seed: int, quick: bool) -> dict:
    models = {
        "global mean": Scorer(dataset.scale, seed, **BASELINES["global mean"]),
        "user mean": Scorer(dataset.scale, seed, use_population=False, use_taste=False, use_mf=False, use_head=False),
        "population head": Scorer(dataset.scale, seed, **BASELINES["population head"]),
        "k-NN (per user)": KNNBaseline(),
        "MF only": Scorer(dataset.scale, seed, **BASELINES["MF only"]),
        "pamela_lite (full)": Scorer(dataset.scale, seed),
    }
    if has_torch():
        from deep_baseline import DeepBaseline, FewShotDeep
        if quick:  # one short configuration each: a smoke run, not a search
            models["deep few-shot (torch)"] = FewShotDeep(n_configs=1, max_steps=150, eval_every=75, seed=seed)
            models["deep MLP + user emb. (torch)"] = DeepBaseline(n_configs=1, epochs=4, seed=seed)
        else:  # each searched on val_seen (a seeded sample of 2 configurations, raw and whitened input)
            models["deep few-shot (torch)"] = FewShotDeep(n_configs=2, budget_s=3600, seed=seed)
            models["deep MLP + user emb. (torch)"] = DeepBaseline(n_configs=2, budget_s=3600, seed=seed)
    return models


def bootstrap_ci(values: np.ndarray, seed: int, n: int = 1000) -> tuple[float, float]:
    """95% interval of the mean of per-user values, resampling users."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (n, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def run_benchmark(dataset, kshots, seed: int, quick: bool) -> tuple[list[dict], dict, dict, dict]:
    """Rows of the main table, per-user SROCC arrays, the deep searches and every scored frame."""
    train, val = dataset.split("train"), dataset.split("val_seen")
    models = build_models(dataset, seed, quick)
    rows, per_user_srocc, searches, scored_frames = [], {}, {}, {}
    for name, model in models.items():
        start = time.perf_counter()
        model.fit(train, dataset.embeddings, validation=val)
        fit_s = time.perf_counter() - start
        if hasattr(model, "search_"):  # the deep baselines: every configuration tried on val_seen
            searches[name] = {"chosen": model.chosen_, "trials": model.search_}
        size = model.size_bytes() if hasattr(model, "size_bytes") else 0
        log(f"fitted {name} in {fit_s:.1f}s")
        for split, k in evaluation_cases(dataset, kshots):
            scored = score_rows(model, dataset, split, k, seed)
            users = per_user(scored)
            lo, hi = bootstrap_ci(users["srocc"].to_numpy(), seed)
            rows.append({"model": name, "split": split, "k": k, **evaluate_scores(scored),
                         "srocc_ci95": [lo, hi], "fit_s": fit_s, "size_bytes": size})
            per_user_srocc[(name, split, k)] = users["srocc"].to_numpy()
            scored_frames[(name, split, k)] = scored
            if name == "global mean":
                ceiling = ceiling_rows(dataset, scored)
                if ceiling is not None:
                    cu = per_user(ceiling)
                    lo, hi = bootstrap_ci(cu["srocc"].to_numpy(), seed)
                    rows.append({"model": "noise ceiling", "split": split, "k": k, **evaluate_scores(ceiling),
                                 "srocc_ci95": [lo, hi], "fit_s": 0.0, "size_bytes": 0})
                    per_user_srocc[("noise ceiling", split, k)] = cu["srocc"].to_numpy()
                    scored_frames[("noise ceiling", split, k)] = ceiling
    if not has_torch():
        log("torch is not installed: the deep baseline row is skipped (pip install torch, CPU build)")
    return rows, per_user_srocc, searches, scored_frames


def users_cross_validation(dataset, seed: int, quick: bool) -> tuple[list[dict], list[dict], dict]:
    """Leave-users-out CV: pamela_lite (full) and the population head on every seen user as a new user.

    Returns the rows (per k and model: per-user SROCC averaged over the context draws, then over
    users, with a bootstrap interval), the paired bootstrap of full against the head per k, and
    the settings.
    """
    seen = dataset.split("train")["participant_id"].n_unique()
    settings = {"n_folds": min(3 if quick else 5, seen), "draws": 2 if quick else 10, "kshots": [0, 10, 100]}
    if settings["n_folds"] < 2:  # one seen person cannot be held out of their own training
        return [], [], settings
    factories = {FULL: lambda s: PersonalScorer(random_state=s),
                 POPULATION: lambda s: PersonalScorer(random_state=s, **BASELINES[POPULATION])}
    scored, context_mean, fit_s = cross_validate_users(factories, dataset, kshots=tuple(settings["kshots"]),
                                                       draws=settings["draws"], n_folds=settings["n_folds"],
                                                       seed=seed, log=log)
    rows, comparisons = [], []
    for k in settings["kshots"]:
        draws = sorted(d for kk, d in scored if kk == k)
        users = {}
        for name in scored[(k, draws[0])]:
            per_draw = pl.concat([per_user(scored[(k, d)][name]).select("participant_id", "srocc", "pairs_correct",
                                                                         "pairs") for d in draws])
            users[name] = per_draw.group_by("participant_id").agg(pl.col("srocc").mean(), pl.col("pairs_correct").sum(),
                                                                  pl.col("pairs").sum()).sort("participant_id")
            lo, hi = bootstrap_ci(users[name]["srocc"].to_numpy(), seed)
            rows.append({"model": name, "k": k, "srocc": float(users[name]["srocc"].mean()), "srocc_ci95": [lo, hi],
                         "pairwise_acc": float(users[name]["pairs_correct"].sum() / max(users[name]["pairs"].sum(), 1)),
                         "n_users": users[name].height, "context_mean": context_mean[(k, draws[0])],
                         "fit_s": fit_s.get(name), "draws": len(draws)})
        comparisons.append({"model": POPULATION, "k": k,
                            **paired_bootstrap(paired_differences(users[FULL], users[POPULATION]), seed)})
    return rows, comparisons, settings


def users_cv_table(cv: tuple[list[dict], list[dict], dict]) -> list[str]:
    rows, comparisons, settings = cv
    if not rows:
        return ["", "Leave-users-out cross-validation: skipped (it needs at least 2 seen people)."]
    lines = ["", f"Leave-users-out cross-validation (beside the official split): the seen users in "
                 f"{settings['n_folds']} seeded folds; the model is refitted without each fold and every seen "
                 f"person is scored once as a new user on their val_seen + test_seen ratings, from k of their "
                 f"own train ratings (mean over {settings['draws']} context draws for k > 0). SROCC: per-user "
                 "mean over draws, then over people, with a 95% bootstrap interval over people; *full − head*: "
                 "paired bootstrap over the same people (one-sided p).", "",
             "| k | model | SROCC [95% CI] | pair acc | people | context/person | fit s per fold |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = r["srocc_ci95"]
        fit = "" if r["fit_s"] is None else f"{r['fit_s']:.1f}"
        lines.append(f"| {r['k']} | {r['model']} | {r['srocc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                     f"{r['pairwise_acc']:.3f} | {r['n_users']} | {r['context_mean']:.0f} | {fit} |")
    lines += ["", "| k | full − head | 95% CI | p | people |", "|---:|---:|---|---:|---:|"]
    for c in comparisons:
        lines.append(f"| {c['k']} | {c['diff']:+.3f} | [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | "
                     f"{_p_value(c['p'])} | {c['n_users']} |")
    return lines


def with_population(frame: pl.DataFrame, population: pl.DataFrame) -> pl.DataFrame:
    """`frame` with ``population_score``: the population head's score for the same row."""
    return frame.join(population.select("participant_id", "image_id", population_score=pl.col("score")),
                      on=["participant_id", "image_id"], how="left")


def add_ranking_metrics(rows: list[dict], scored_frames: dict, dataset) -> list[dict]:
    """Each row with Kendall tau-b, personalization share and best-of-N regret of its scored frame.

    The personalization share needs the population head's scores on the same (split, k); its
    leave-one-out image means come from the whole split (other users' context ratings included).
    """
    out = []
    for row in rows:
        frame = scored_frames[(row["model"], row["split"], row["k"])]
        population = scored_frames.get((POPULATION, row["split"], row["k"]))
        if population is not None:
            frame = with_population(frame, population)
        out.append({**row, **ranking_metrics(frame, "population_score" if population is not None else None,
                                             reference=dataset.split(row["split"]))})
    return out


def paired_comparisons(scored_frames: dict, seed: int) -> list[dict]:
    """pamela_lite (full) against every other model on the same split and k: paired per-user SROCC."""
    out = []
    for (name, split, k), frame in scored_frames.items():
        full = scored_frames.get((FULL, split, k))
        if name in (FULL, CEILING) or full is None:
            continue
        diff = paired_differences(per_user(full), per_user(frame))
        out.append({"model": name, "split": split, "k": k, **paired_bootstrap(diff, seed)})
    return out


def demographic_groups(scored_frames: dict) -> tuple[list[dict], str | None]:
    """k = 0 on test_unseen per demographic group: pamela_lite (full) and the population head.

    Returns the rows and, when there is nothing to show, a note saying why.
    """
    full, population = (scored_frames.get((name, "test_unseen", 0)) for name in (FULL, POPULATION))
    if full is None or population is None:
        return [], "No test_unseen case at k = 0: the per-group table is skipped."
    present = [(label, expr) for label, column, expr in DEMOGRAPHIC_GROUPS
               if column in full.columns and full[column].null_count() < full.height]
    if not present:
        return [], "The data has no demographics (age, gender, nationality): the per-group table is skipped."
    rows = []
    for label, expr in present:
        mine = group_errors(full, expr)
        theirs = group_errors(population, expr).select("group", mae_population="mae", srocc_population="srocc")
        rows += [{"attribute": label, **r} for r in mine.join(theirs, on="group", how="left").iter_rows(named=True)]
    return rows, None


def in_table_order(rows: list[dict]) -> list[dict]:
    """By split, then k, then model in the order fitted, the noise ceiling last."""
    order = list(dict.fromkeys(r["model"] for r in rows if r["model"] != CEILING)) + [CEILING]
    return sorted(rows, key=lambda r: (r["split"], -1 if r["k"] is None else r["k"], order.index(r["model"])))


def _num(value, digits: int = 3, sign: str = "") -> str:
    """A number for the tables; an en dash for a missing one (None or NaN)."""
    return "–" if value is None or np.isnan(value) else f"{value:{sign}.{digits}f}"


def ranking_table(rows: list[dict]) -> list[str]:
    lines = ["", "Ranking and regret. Kendall tau-b: per user, averaged like SROCC. Personalization share: per "
                 "user, the SROCC of (rating - the image's mean rating by the split's other raters) against (score - "
                 "the population head's score on the same row), over users with >= 5 rows whose image someone else "
                 "rated (users in brackets); the population head is 0 by construction. Best-of-N regret: per user, "
                 "the best rating among their rated images less the rating of the image the model scores highest "
                 "(tied top scores: their mean rating), in rating units and in units of the user's rating SD; lower "
                 "is better; a top-1 statistic, noisy for a split with few users.", "",
             "| split | k | model | SROCC | Kendall tau-b | personalization share (users) | best-of-N regret | "
             "regret / SD |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in in_table_order(rows):
        k = "" if r["k"] is None else r["k"]
        lines.append(f"| {r['split']} | {k} | {r['model']} | {r['srocc']:.3f} | {_num(r['kendall'])} | "
                     f"{_num(r['personalization'])} ({r['personalization_users']}) | {_num(r['regret'])} | "
                     f"{_num(r['regret_sd'])} |")
    return lines


def _p_value(p: float, resamples: int = 2000) -> str:
    return f"< {1 / resamples:.4f}" if p == 0 else _num(p)


def comparison_table(comparisons: list[dict]) -> list[str]:
    lines = ["", f"Does {FULL} beat each model? Paired bootstrap over users (same users, same rows): mean per-user "
                 "SROCC difference, 95% interval from 2000 seeded resamples of the users, p = share of resamples with "
                 "difference <= 0 (one-sided). With few users (test_unseen here) the interval is coarse: n users "
                 "allow few distinct resamples.", "",
             f"| split | k | {FULL} vs | SROCC diff [95% CI] | p | users |", "|---|---:|---|---|---:|---:|"]
    for c in in_table_order(comparisons):
        k = "" if c["k"] is None else c["k"]
        lo, hi = c["ci95"]
        lines.append(f"| {c['split']} | {k} | {c['model']} | {_num(c['diff'], sign='+')} "
                     f"[{_num(lo, sign='+')}, {_num(hi, sign='+')}] | "
                     f"{_p_value(c['p'])} | {c['n_users']} |")
    return lines


def group_table(groups: list[dict], note: str | None) -> list[str]:
    lines = ["", f"New people with no ratings (test_unseen, k = 0) per demographic group: {FULL} against the "
                 "population head. MAE over the group's ratings; SROCC: mean per-user SROCC of the group's users. "
                 "Groups of few users are descriptive, not tests.", ""]
    if note:
        return lines + [note]
    lines += [f"| attribute | group | users | MAE {FULL} | MAE population head | SROCC {FULL} | "
              "SROCC population head |", "|---|---|---:|---:|---:|---:|---:|"]
    for g in groups:
        lines.append(f"| {g['attribute']} | {g['group']} | {g['users']} | {_num(g['mae'])} | "
                     f"{_num(g['mae_population'])} | {_num(g['srocc'])} | {_num(g['srocc_population'])} |")
    return lines


def markdown(rows: list[dict], info: dict, args, torch_note: str, searches: dict | None = None,
             comparisons: list[dict] | None = None, groups: tuple[list[dict], str | None] | None = None,
             users_cv: tuple[list[dict], list[dict], dict] | None = None) -> str:
    lines = [f"# Accuracy benchmark ({'quick' if args.quick else 'full'}, data: {args.data or 'demo world'})", "",
             machine_lines(info), "", torch_note, "",
             "| split | k | model | SROCC [95% CI] | PLCC | pair acc | MAE | RMSE | users | fit s | size |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in in_table_order(rows):
        k = "" if r["k"] is None else r["k"]
        ci = r["srocc_ci95"]
        size = f"{r['size_bytes'] / 1e6:.2f} MB" if r["size_bytes"] else ""
        fit = f"{r['fit_s']:.1f}" if r["fit_s"] else ""
        lines.append(f"| {r['split']} | {k} | {r['model']} | {r['srocc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
                     f"{r['plcc']:.3f} | {r['pairwise_acc']:.3f} | {r['mae']:.3f} | {r['rmse']:.3f} | "
                     f"{r['n_users']} | {fit} | {size} |")
    if rows and "kendall" in rows[0]:
        lines += ranking_table(rows)
    if comparisons:
        lines += comparison_table(comparisons)
    if groups is not None:
        lines += group_table(*groups)
    if users_cv is not None:
        lines += users_cv_table(users_cv)
    if searches:
        lines += ["", "Deep baselines' validation search (val_seen: mean per-user SROCC; the few-shot model's is the "
                      "mean over the full-training and a seeded 10-rating context; *epochs*: early-stopped epochs, "
                      "or steps for the few-shot model):", "",
                  "| model | configuration | val | epochs / steps | seconds | chosen |", "|---|---|---:|---:|---:|---|"]
        for name, search in searches.items():
            for t in search["trials"]:
                config = {k: v for k, v in t.items() if k not in ("val", "epochs", "seconds")}
                chosen = "**yes**" if config == search["chosen"] else ""
                lines.append(f"| {name} | {', '.join(f'{k} {v}' for k, v in config.items())} | {t['val']:.3f} | "
                             f"{t['epochs']} | {t['seconds']:.0f} | {chosen} |")
    return "\n".join(lines) + "\n"


def plots(rows: list[dict], per_user_srocc: dict, out: Path, name: str) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (pip install matplotlib)")
        return []
    paths = []
    seen = [(name, v) for (name, split, k), v in per_user_srocc.items() if split == "test_seen"]
    if seen:
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.boxplot([v for _, v in seen], orientation="horizontal", showmeans=True)
        ax.set_yticks(range(1, len(seen) + 1), [n for n, _ in seen])
        ax.set_xlabel("per-user SROCC on test_seen")
        ax.set_title("Per-user SROCC distribution (each box: one model, one point per user)")
        fig.tight_layout()
        paths.append(out / f"{name}_per_user_srocc.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    unseen = [r for r in rows if r["split"] == "test_unseen"]
    if unseen:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for model in dict.fromkeys(r["model"] for r in unseen):
            pts = sorted((r["k"], r["srocc"], r["srocc_ci95"]) for r in unseen if r["model"] == model)
            ks = [p[0] for p in pts]
            ax.errorbar(ks, [p[1] for p in pts], yerr=[[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]],
                        marker="o", capsize=3, label=model)
        ax.set_xlabel("k (context ratings of the unseen user)")
        ax.set_ylabel("mean per-user SROCC on test_unseen")
        ax.set_title("Unseen users: accuracy vs. k (bars: 95% bootstrap over users)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / f"{name}_vs_k.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="PAMELA root or ratings table; default: the demo world")
    parser.add_argument("--embeddings", type=Path, help="embeddings Parquet for --data")
    parser.add_argument("--quick", action="store_true", help="smaller world, fewer deep epochs (< 2 min)")
    parser.add_argument("--kshot", default="0,10,50", help="context sizes for unseen users")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="results file stem (default accuracy)")
    args = parser.parse_args(argv)
    kshots = tuple(int(k) for k in args.kshot.split(","))
    info = machine()
    log(machine_lines(info))
    start = time.perf_counter()
    if args.data:
        dataset = load_dataset(args.data, args.embeddings, seed=args.seed)
    else:
        cfg = DemoConfig(n_users=100, n_images=2500, n_ratings=35000, seed=args.seed) if args.quick \
            else DemoConfig(seed=args.seed)
        dataset = world_dataset(cfg)
    rows, per_user_srocc, searches, scored_frames = run_benchmark(dataset, kshots, args.seed, args.quick)
    rows = add_ranking_metrics(rows, scored_frames, dataset)
    comparisons = paired_comparisons(scored_frames, args.seed)
    groups = demographic_groups(scored_frames)
    users_cv = users_cross_validation(dataset, args.seed, args.quick)
    torch_note = ("Deep baseline: benchmarks/deep_baseline.py (torch, CPU)." if has_torch() else
                  "**torch is not installed: the deep baseline was skipped.** Install the CPU build to include it.")
    name = args.name or "accuracy"
    out = results_dir(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(rows, info, args, torch_note, searches, comparisons, groups, users_cv)
    figures = plots(rows, per_user_srocc, out, name)
    if figures:
        md += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in figures) + "\n"
    arguments = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    save(name, {"machine": info, "args": arguments, "rows": rows, "paired_bootstrap": comparisons,
                "k0_groups": {"rows": groups[0], "note": groups[1]}, "deep_search": searches,
                "users_cv": {"rows": users_cv[0], "paired_bootstrap": users_cv[1], **users_cv[2]}}, md, out)
    print(md)
    log(f"done in {time.perf_counter() - start:.0f}s → {out / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
