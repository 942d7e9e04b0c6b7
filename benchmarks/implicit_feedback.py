"""The implicit-feedback channel: how many events are worth how many ratings (issue 9).

    python benchmarks/implicit_feedback.py            # demo + lowvar at their default sizes
    python benchmarks/implicit_feedback.py --quick    # small worlds, results to benchmarks/results/quick/

For each world: 20% of the seen people are held out of training (the zoo's pseudo-unseen
protocol, ``pamela_lite.world_eval.pseudo_unseen_split``) and PersonalScorer is fitted on the
rest. For each event model (``pamela_lite.event_sim``: session, feed, nosignal) a log of
everyone is simulated from the world's true utilities; the event channel is chosen on val_seen
from the TRAINING people's events (``pamela_lite.event_fit.calibrate``). The held-out people are
then folded in (no refit) from

* k of their own ratings (the ratings curve; mean over 3 seeded draws),
* their first n shown images and the actions on them (the events curve), alone or with 10 ratings,
* the naive alternative: the same events mapped to pseudo-ratings (kept: top of the scale,
  rejected: bottom, shown only: middle) and folded in as ratings,
* their events folded into a scorer fitted on the training people's events alone (no rating
  anywhere: ``fit --events`` without ``--data``, ``pamela_lite.event_fit.fit_events_only``),

and scored by per-user SROCC on their val_seen + test_seen ratings (images nobody rated in
training, and never shown in any log). About 40 people are held out per world, so one run's
figures move by a few hundredths with the seed: the whole protocol (held-out people, fit, logs,
context draws) runs for each of ``--seeds`` and the tables show the mean over seeds, the
targets the mean and the range. Writes implicit_feedback.{md,json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine, machine_lines, results_dir, save  # noqa: E402

from pamela_lite import event_sim, worlds  # noqa: E402
from pamela_lite.event_fit import calibrate, fit_events_only, fold_seen_events  # noqa: E402
from pamela_lite.events import evidence, validate_events  # noqa: E402
from pamela_lite.metrics import evaluate_scores  # noqa: E402
from pamela_lite.model import PersonalScorer  # noqa: E402
from pamela_lite.protocol import kshot_split  # noqa: E402
from pamela_lite.world_eval import pseudo_unseen_split  # noqa: E402

WORLDS = ("demo", "lowvar")
MODELS = event_sim.MODELS
RATINGS = (0, 5, 10, 20, 50, 100)
EVENTS = (25, 50, 100, 200, 400, 800)
WITH_RATINGS = (200, 800)
DRAWS = 3
SEEDS = (0, 1, 2)
QUICK = dict(n_users=100, n_images=1500)
CURVES = ("alone", "with_10", "naive_alone", "naive_with_10", "events_only", "actions_per_person")


def first_impressions(raw: pl.DataFrame, n: int) -> pl.DataFrame:
    """Each person's first n shown images (simulator order: by session, position) and the actions on them."""
    shown = (pl.col("event") == "view").cast(pl.Int64).cum_sum().over("participant_id")
    return raw.filter(shown <= n)


def naive_ratings(events: pl.DataFrame, scale) -> pl.DataFrame:
    """Events as pseudo-ratings: evidence > 0 -> top of the scale, < 0 -> bottom, 0 -> middle."""
    middle = (scale.low + scale.high) // 2
    m = evidence(events)
    return m.select("participant_id", "image_id", rating=pl.when(pl.col("evidence") > 0).then(scale.high)
                    .when(pl.col("evidence") < 0).then(scale.low).otherwise(middle).cast(pl.Int64))


def srocc(model, data, query, context, users, events=None) -> float:
    states = model.fold_in(context, data.embeddings, users=users, events=events)
    scored = query.with_columns(score=pl.Series(model.predict(query, data.embeddings, states), dtype=pl.Float64))
    return evaluate_scores(scored)["srocc"]


def seen_people(model, data, train, validation, events) -> dict:
    """The training people's own events (their whole log) added to their fitted states, kept only if
    val_seen says so (``event_fit.fold_seen_events``); scored on their test_seen ratings, which no
    choice saw. The model's states are restored afterwards."""
    fitted_states = model.user_states_.copy()
    query = data.split("test_seen").filter(pl.col("participant_id").is_in(train["participant_id"].unique().implode()))
    known = lambda: evaluate_scores(query.with_columns(
        score=pl.Series(model.predict(query, data.embeddings), dtype=pl.Float64)))["srocc"]
    before = known()
    judged = fold_seen_events(model, events, train, validation, data.embeddings)
    after = known()
    model.user_states_ = fitted_states
    return {"kept": judged["kept"], "val_gain": judged.get("gain", 0.0), "val_gain_se": judged.get("gain_se", 0.0),
            "test_without": before, "test_with": after, "people": query["participant_id"].n_unique()}


def run_world(name: str, quick: bool, seed: int) -> dict:
    t0 = time.perf_counter()
    world = worlds.make(name, **(QUICK if quick else {}))
    data = worlds.dataset(world)
    train, validation, pool, query = pseudo_unseen_split(data, seed=seed)
    model = PersonalScorer(random_state=seed, n_threads=1).fit(train, data.embeddings, data.scale,
                                                               validation=validation)
    log(f"{name}: world and fit in {time.perf_counter() - t0:.0f}s")
    users = query.unique("participant_id", keep="first", maintain_order=True)
    held = users["participant_id"]
    empty = pool.head(0)
    out = {"world": name, "seed": seed, "held_out_people": len(held), "ratings": {}, "events": {}}
    contexts = {k: [kshot_split(pool, k, seed + d)[0] for d in range(1 if k == 0 else DRAWS)] for k in RATINGS}
    for k, draws in contexts.items():
        out["ratings"][k] = float(np.mean([srocc(model, data, query, c, users) for c in draws]))
    log(f"{name}: ratings curve {out['ratings']}")
    for kind in MODELS:
        t1 = time.perf_counter()
        raw = event_sim.simulate(world, kind, impressions=max(EVENTS), seed=seed)
        events = validate_events(raw, f"{kind} log")
        channel = calibrate(model, events.filter(~pl.col("participant_id").is_in(held.implode())), train,
                            validation, data.embeddings, seed=seed)
        mine = raw.filter(pl.col("participant_id").is_in(held.implode()))
        theirs = events.filter(~pl.col("participant_id").is_in(held.implode()))
        seen = seen_people(model, data, train, validation, theirs)
        # Events alone: the training people's whole logs, no rating (what fit --events without --data makes)
        events_only = fit_events_only(theirs, data.embeddings, seed=seed, threads=1)
        row = {"channel": channel.to_json(), "log": event_sim.summary(raw), "alone": {}, "with_10": {},
               "naive_alone": {}, "naive_with_10": {}, "events_only": {}, "actions_per_person": {}, "seen": seen}
        for n in EVENTS:
            sub = validate_events(first_impressions(mine, n), f"{kind} log")
            row["actions_per_person"][n] = round(sub.filter(pl.col("event") != "view").height / len(held), 1)
            row["alone"][n] = srocc(model, data, query, empty, users, sub)
            if n in WITH_RATINGS:
                row["with_10"][n] = float(np.mean([srocc(model, data, query, c, users, sub) for c in contexts[10]]))
                row["events_only"][n] = srocc(events_only, data, query, empty, users, sub)
                fake = naive_ratings(sub, data.scale)
                row["naive_alone"][n] = srocc(model, data, query, fake, users)
                row["naive_with_10"][n] = float(np.mean([
                    srocc(model, data, query, pl.concat([c.select("participant_id", "image_id", "rating"), fake]), users)
                    for c in contexts[10]]))
        out["events"][kind] = row
        log(f"{name}/{kind}: strength {channel.strength:g} ({channel.report.get('gain')} +- "
            f"{channel.report.get('gain_se')} on val), alone {row['alone']}, +10 ratings {row['with_10']}, "
            f"naive {row['naive_alone']} ({time.perf_counter() - t1:.0f}s)")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def mean_over_seeds(runs: list[dict]) -> dict:
    """One world's runs (one per seed) as one run of mean figures; per kind of log, `channels`
    lists each seed's channel and `per_seed` keeps each seed's curves (for the targets' ranges)."""
    mean = lambda values: float(np.mean(values))
    out = {"world": runs[0]["world"], "seeds": [r["seed"] for r in runs],
           "held_out_people": mean([r["held_out_people"] for r in runs]),
           "ratings": {k: mean([r["ratings"][k] for r in runs]) for k in RATINGS}, "events": {}}
    for kind in runs[0]["events"]:
        rows = [r["events"][kind] for r in runs]
        out["events"][kind] = {
            "channels": [row["channel"] for row in rows],
            "log": {key: mean([row["log"].get(key, 0.0) for row in rows]) for key in rows[0]["log"]},
            **{curve: {n: mean([row[curve][n] for row in rows]) for n in rows[0][curve]} for curve in CURVES},
            "seen": {"kept": [row["seen"]["kept"] for row in rows], "val_gain": [row["seen"]["val_gain"] for row in rows],
                     "test_without": mean([row["seen"]["test_without"] for row in rows]),
                     "test_with": mean([row["seen"]["test_with"] for row in rows]),
                     "change_per_seed": [row["seen"]["test_with"] - row["seen"]["test_without"] for row in rows],
                     "people": mean([row["seen"]["people"] for row in rows])},
            "per_seed": [{"ratings": r["ratings"], **{c: row[c] for c in CURVES}} for r, row in zip(runs, rows)]}
    return out


def targets(result: dict) -> list[str]:
    """The issue's targets on the mean over seeds; *measured* also shows the range over seeds."""
    lines = []
    for w in result["worlds"]:
        ten = w["ratings"][10]
        for kind, row in w["events"].items():
            seeds = row["per_seed"]
            span = lambda values: f" ({min(values):+.3f} to {max(values):+.3f})" if len(values) > 1 else ""
            change = row["seen"]["test_with"] - row["seen"]["test_without"]
            seen = (f"| {w['world']} | {kind} | seen people: their own events never make test_seen worse "
                    f"(>= -0.005) | {change:+.3f}{span(row['seen']['change_per_seed'])}; added on "
                    f"{sum(row['seen']['kept'])} of {len(row['seen']['kept'])} seed(s) | "
                    f"{'met' if min(row['seen']['change_per_seed']) >= -0.005 else 'NOT met'} |")
            if kind == "nosignal":
                worst = min([row["alone"][n] - w["ratings"][0] for n in EVENTS]
                            + [row["with_10"][n] - ten for n in WITH_RATINGS])
                each = [min([s["alone"][n] - s["ratings"][0] for n in EVENTS]
                            + [s["with_10"][n] - s["ratings"][10] for n in WITH_RATINGS]) for s in seeds]
                lines.append(f"| {w['world']} | {kind} | events change SROCC by >= -0.005 | worst change "
                             f"{worst:+.3f}{span(each)} | {'met' if worst >= -0.005 else 'NOT met'} |")
                lines.append(seen)
                continue
            reach = next((n for n in EVENTS if row["alone"][n] >= ten), None)
            short = row["alone"][200] - ten
            lines.append(f"| {w['world']} | {kind} | ~200 events alone reach the 10-rating SROCC ({ten:.3f}) | "
                         f"200 events: {row['alone'][200]:.3f}, {short:+.3f}"
                         f"{span([s['alone'][200] - s['ratings'][10] for s in seeds])}; the mean reaches it at "
                         f"{reach if reach else 'none of'} {'events' if reach else str(max(EVENTS)) + ' events'} | "
                         f"{'met' if short >= -0.005 else 'NOT met'} |")
            gain = row["with_10"][200] - ten
            lines.append(f"| {w['world']} | {kind} | 10 ratings + 200 events beat 10 ratings by >= +0.05 | "
                         f"{gain:+.3f}{span([s['with_10'][200] - s['ratings'][10] for s in seeds])} "
                         f"(800 events: {row['with_10'][800] - ten:+.3f}) | {'met' if gain >= 0.05 else 'NOT met'} |")
            naive = row["alone"][200] - row["naive_alone"][200]
            lines.append(f"| {w['world']} | {kind} | the channel beats naive pseudo-ratings (200 events alone) | "
                         f"{naive:+.3f}{span([s['alone'][200] - s['naive_alone'][200] for s in seeds])} | "
                         f"{'met' if naive > 0 else 'NOT met'} |")
            lines.append(seen)
    return lines


def markdown(result: dict) -> str:
    out = ["# Implicit feedback: events vs ratings for new people (issue 9)", "",
           machine_lines(result["machine"]), "",
           f"Command: `{result['command']}`; {result['seconds'] / 60:.0f} min. Per-user SROCC of the held-out "
           "people (pseudo-unseen, about 20% of the seen people) on their val_seen + test_seen ratings; events are "
           "counted as shown images (the actions on them come with them). Ratings curve: mean of 3 draws. "
           f"Every figure is the mean over seeds {', '.join(map(str, result['seeds']))} (held-out people, fit, "
           "logs and draws all change with the seed); the targets also show the range over seeds. "
           "The channel's numbers are chosen on val_seen (`event_fit.calibrate`); *rejections* says whether a "
           "skip, dislike or regenerate is preference -1 (signed) or 0 like a plain view (zero: implicit's "
           "model); *centred per* whether the intercept profiled out is each session's (a choice within the "
           "batch) or the person's (sessions compared with each other too).", ""]
    for w in result["worlds"]:
        out += [f"## {w['world']} (about {w['held_out_people']:.0f} held-out people per seed)", "",
                "| ratings k | " + " | ".join(str(k) for k in RATINGS) + " |",
                "|---|" + "---|" * len(RATINGS),
                "| SROCC | " + " | ".join(f"{w['ratings'][k]:.3f}" for k in RATINGS) + " |", "",
                "| event model | channel per seed (strength, gain, alpha, rejections, centred per; val gain +- se) "
                "| row | " + " | ".join(str(n) for n in EVENTS) + " |", "|---|---|---|" + "---|" * len(EVENTS)]
        for kind, row in w["events"].items():
            desc = "<br>".join(f"{ch['strength']:g}, {ch['gain']:.2f}, {ch['alpha']:g}, "
                               f"{'signed' if ch.get('signed') else 'zero'}, {ch.get('within', 'session')}; "
                               f"{ch['report'].get('gain', 0):+.3f} +- {ch['report'].get('gain_se', 0):.3f}"
                               for ch in row["channels"])
            cells = lambda key: " | ".join(f"{row[key][n]:.3f}" if n in row[key] else "" for n in EVENTS)
            out.append(f"| {kind} | {desc} | events alone | {cells('alone')} |")
            out.append(f"| | | 10 ratings + events | {cells('with_10')} |")
            out.append(f"| | | naive pseudo-ratings alone | {cells('naive_alone')} |")
            out.append(f"| | | naive + 10 ratings | {cells('naive_with_10')} |")
            out.append(f"| | | scorer fitted on events alone (no rating anywhere) | {cells('events_only')} |")
            out.append("| | | non-view event rows per person | " + " | ".join(f"{row['actions_per_person'][n]:.1f}" for n in EVENTS) + " |")
        out.append("")
        out += ["Logs (action rates per shown image): " + "; ".join(
            f"{kind}: " + ", ".join(f"{k} {v:.4f}" for k, v in row["log"].items() if k.endswith("_rate"))
            for kind, row in w["events"].items()), ""]
        out += [f"Seen people (the training people, about {next(iter(w['events'].values()))['seen']['people']:.0f}; "
                "each has their whole log): their own events added to their fitted states when val_seen says so "
                "(`event_fit.fold_seen_events`: kept only when two standard errors better), scored on test_seen; "
                "on a seed where they were not added nothing changes, so the target below can fail only on the "
                "seeds that added them.", "",
                "| event model | added, per seed | val_seen gain per seed | test_seen without / with their events |",
                "|---|---|---|---|"]
        for kind, row in w["events"].items():
            seen = row["seen"]
            out.append(f"| {kind} | {', '.join('yes' if k else 'no' for k in seen['kept'])} | "
                       f"{', '.join(f'{g:+.4f}' for g in seen['val_gain'])} | "
                       f"{seen['test_without']:.4f} / {seen['test_with']:.4f} |")
        out.append("")
    out += ["## Targets (issue 9)", "", "| world | event model | target | measured | |", "|---|---|---|---|---|",
            *targets(result), ""]
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result["worlds"]), figsize=(6 * len(result["worlds"]), 4.2), squeeze=False)
    for ax, w in zip(axes[0], result["worlds"]):
        ks = [k for k in RATINGS if k]
        ax.plot(ks, [w["ratings"][k] for k in ks], "k-o", label="ratings (x = ratings)")
        for kind, style in zip(MODELS, ("C0", "C1", "C2")):
            row = w["events"][kind]
            ax.plot(EVENTS, [row["alone"][n] for n in EVENTS], "-s", color=style, label=f"{kind} events alone")
            ax.plot(WITH_RATINGS, [row["naive_alone"][n] for n in WITH_RATINGS], ":x", color=style,
                    label=f"{kind} naive pseudo-ratings")
        ax.axhline(w["ratings"][10], color="grey", lw=0.8, ls="--", label="10 ratings")
        ax.axhline(w["ratings"][0], color="grey", lw=0.8, ls=":", label="0 ratings (demographics)")
        ax.set_xscale("log")
        ax.set_xlabel("ratings, or shown images with their actions")
        ax.set_ylabel("per-user SROCC, held-out people")
        ax.set_title(w["world"])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small worlds; results to benchmarks/results/quick/")
    parser.add_argument("--worlds", default=",".join(WORLDS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                        help="comma-separated seeds; every figure is the mean over them (default %(default)s)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    command = "python benchmarks/implicit_feedback.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    result = {"machine": machine(), "command": command, "seeds": seeds,
              "worlds": [mean_over_seeds([run_world(w, args.quick, s) for s in seeds]) for w in args.worlds.split(",")]}
    result["seconds"] = time.perf_counter() - t0
    folder = results_dir(args.quick)
    save("implicit_feedback", result, markdown(result), folder)
    try:
        plot(result, folder / "implicit_feedback.png")
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
