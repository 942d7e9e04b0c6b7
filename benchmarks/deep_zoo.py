"""The deep few-shot baseline beside pamela_lite and the population head, on zoo worlds.

    python benchmarks/deep_zoo.py                          # demo, lowvar, mixture (~15 min on 2 cores, 2026-11-27)
    python benchmarks/deep_zoo.py --worlds lowvar --draws 10
    python benchmarks/deep_zoo.py --quick                  # small worlds, tiny search, to results/quick/

Per world (``pamela_lite.worlds``), with ``pamela_lite.world_eval.evaluate_world`` — the toolkit's
protocol, the same splits and the same seeded context draws for every model: test_seen,
test_unseen and pseudo-unseen users (20% of the seen users held out of training) at k = 0, 10,
100 (mean over --draws draws), for the population head, pamela_lite and ``FewShotDeep``
(benchmarks/deep_baseline.py), beside the true-taste ridge and the noise ceiling.

The deep model's configuration is searched once per world, on the pseudo-unseen split's own
training and validation rows (train and val_seen without the held-out users: never a test row,
never a held-out user's row); the chosen configuration is then trained on the full training
split for test_seen / test_unseen (early-stopped on val_seen there). The search's best trial is
the pseudo-unseen model (same data, configuration and seed: retraining would give it again).

Writes benchmarks/results/deep_baseline.{md,json} (--quick: benchmarks/results/quick/). Without
torch the deep rows are left out, with a note, and the rest still runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import has_torch, log, machine, machine_lines, results_dir, save, world_names  # noqa: E402

from pamela_lite import worlds  # noqa: E402
from pamela_lite.model import PersonalScorer  # noqa: E402
from pamela_lite.world_eval import CEILING, RIDGE, evaluate_world, pseudo_unseen_split  # noqa: E402

HEAD, MODEL, DEEP = "population head", "pamela_lite", "deep few-shot (torch)"
ORDER = (HEAD, MODEL, DEEP, RIDGE, CEILING)
QUICK = dict(n_users=100, n_images=1500)
TINY = dict(n_users=50, n_images=400)  # --tiny (with --quick): the test suite's smoke run
CASES = (("test_seen", None), ("test_unseen", 0), ("test_unseen", 10), ("test_unseen", 100),
         ("pseudo_unseen", 0), ("pseudo_unseen", 10), ("pseudo_unseen", 100))


def deep_factory(dataset, seed: int, quick: bool, say, configs: int = 2):
    """Search the deep model on the pseudo-unseen split's train / val; a factory for both fits."""
    from deep_baseline import FewShotDeep
    settings = dict(n_configs=1, max_steps=150, eval_every=75) if quick else dict(n_configs=configs, budget_s=1500, max_steps=1200)
    train, validation, _, _ = pseudo_unseen_split(dataset, 0.2, seed)
    t = time.perf_counter()
    searched = FewShotDeep(seed=seed, **settings).fit(train, dataset.embeddings, dataset.scale, validation=validation)
    say(f"  deep search {time.perf_counter() - t:.0f}s: chosen {searched.chosen_} "
        f"(val {searched.val_best_:.3f}, {searched.epochs_best_} steps)")

    def factory(s):
        model = FewShotDeep(config=searched.chosen_, seed=s, **{k: v for k, v in settings.items() if k != "n_configs"})
        original = model.fit

        def fit(tr, embeddings, scale=None, validation=None):
            if s == seed and tr.equals(train) and validation is not None and validation.equals(searched_val):
                return searched  # the search's best trial: same data, configuration and seed
            return original(tr, embeddings, scale, validation=validation)
        model.fit = fit
        return model

    searched_val = validation
    return factory, searched


def _find(rows, world, protocol, k, model):
    return next((r for r in rows if r["world"] == world and r["protocol"] == protocol and r["k"] == k
                 and r["model"] == model), None)


def verdicts(rows, names) -> dict:
    """Per world: does the deep model beat the population head on every reported case?"""
    out = {}
    for w in names:
        cases = []
        for protocol, k in CASES:
            if k == 0:
                continue  # no context: nothing personal to beat the head with
            d, h = _find(rows, w, protocol, k, DEEP), _find(rows, w, protocol, k, HEAD)
            if d is not None and h is not None:
                cases.append((protocol, k, d["srocc"] - h["srocc"]))
        out[w] = {"beats_head_everywhere": bool(cases) and all(c[2] > 0 for c in cases),
                  "lifts": [{"protocol": p, "k": k, "deep_minus_head": v} for p, k, v in cases]}
    return out


def markdown(rows, summaries, searches, verdict, info, args, seconds, deep_on: bool) -> str:
    out = [f"# Deep baseline on zoo worlds{' (quick)' if args.quick else ''}", "",
           f"`python benchmarks/deep_zoo.py{' --quick' if args.quick else ''} --worlds {args.worlds} --draws "
           f"{args.draws}` — seed {args.seed}, k-shot = mean over {args.draws} seeded context draws (the same draws "
           f"for every model), {seconds / 60:.1f} min in all (1-min load average {info['load_average_1min'][0]} at the "
           f"start, {info['load_average_1min'][1]} at the end).", "", machine_lines(info), ""]
    if not deep_on:
        out += ["**torch is not installed: the deep rows were skipped.** Install the CPU build to include them.", ""]
    out += ["Per-user SROCC. **head** = population head, **pamela_lite** = the full model, **deep** = "
            "`FewShotDeep` (benchmarks/deep_baseline.py: a set / in-context model, new people scored from "
            "their k ratings by a forward pass), **ridge** = per-user ridge on the world's TRUE image features, "
            "**ceiling** = the true expected rating. test_unseen has 7-11 users (noisy); pseudo_unseen ≈ 40 "
            "users held out of training.", "",
            "| world | protocol | k | head | pamela_lite | deep | ridge | ceiling | deep − head | users |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        w = s["world"]
        for protocol, k in CASES:
            rs = [_find(rows, w, protocol, k, m) for m in ORDER]
            if all(r is None for r in rs):
                continue
            first = next(r for r in rs if r is not None)
            cells = " | ".join("–" if r is None else f"{r['srocc']:.3f}" for r in rs)
            lift = "–" if rs[0] is None or rs[2] is None else f"{rs[2]['srocc'] - rs[0]['srocc']:+.3f}"
            out.append(f"| {w} | {protocol} | {'' if k is None else k} | {cells} | {lift} | {first['n_users']} |")
    if deep_on:
        out += ["", "## Is the comparison meaningful? (issue 8: the deep baseline must beat the population head)", "",
                "| world | deep > head on every case with context (test_seen, k = 10 / 100) | verdict |",
                "|---|---|---|"]
        for w, v in verdict.items():
            lifts = ", ".join(f"{c['protocol']}{'' if c['k'] is None else ' k=' + str(c['k'])} "
                              f"{c['deep_minus_head']:+.3f}" for c in v["lifts"])
            say = ("meaningful: the deep baseline personalises here" if v["beats_head_everywhere"] else
                   "**not meaningful where the lift is ≤ 0**: the deep baseline does not beat the head there")
            out.append(f"| {w} | {lifts} | {say} |")
        zero = ", ".join(f"{w} {p.replace('_', '-')} {r['srocc'] - h['srocc']:+.3f}"
                         for w in verdict for p in ("test_unseen", "pseudo_unseen")
                         if (r := _find(rows, w, p, 0, DEEP)) and (h := _find(rows, w, p, 0, HEAD)))
        out += ["", f"k = 0 (no context: demographics are not an input of the deep model) is left out of the "
                    f"verdict; deep − head there: {zero}.",
                "", "Steps: the search and the fits stop at 1200 steps; a trial that is still improving there is "
                    "under-trained (see *steps* below), so more budget may lift the deep rows."]
        out += ["", "## Validation search (on the pseudo-unseen split's train / val_seen; never a test row)", "",
                "Criterion: mean per-user SROCC on validation rows, averaged over the full-training context and a "
                "seeded 10-rating context. *steps*: early-stopped step count.", "",
                "| world | whiten | width | depth | ctx_dim | weight decay | val | steps | seconds | chosen |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for w, search in searches.items():
            for t in search["trials"]:
                chosen = "**yes**" if all(t[k] == search["chosen"][k] for k in search["chosen"]) else ""
                out.append(f"| {w} | {t['whiten']} | {t['width']} | {t['depth']} | {t['ctx_dim']} | "
                           f"{t['weight_decay']:g} | {t['val']:.3f} | {t['epochs']} | {t['seconds']:.0f} | {chosen} |")
    out += ["", "## Worlds", ""] + [f"- **{s['world']}**: D = {s['dim']}, scale {s['scale']}, {s['users']} users, "
                                     f"{s['images']} images, {s['ratings']:,} ratings — {s['description']}"
                                     for s in summaries]
    return "\n".join(out) + "\n"


def merge(args) -> int:
    """One results file from several per-world runs (same code, same arguments but --worlds)."""
    missing = [str(p) for p in args.merge if not p.is_file()]
    if missing:
        sys.exit(f"--merge: no such results file: {', '.join(missing)} (per-world runs write "
                 f"benchmarks/results/deep_WORLD.json with --name deep_WORLD)")
    parts = [json.loads(p.read_text()) for p in args.merge]
    rows = [r for p in parts for r in p["rows"]]
    summaries = [s for p in parts for s in p["worlds"]]
    searches = {k: v for p in parts for k, v in p["search"].items()}
    verdict = {k: v for p in parts for k, v in p["verdict"].items()}
    info = parts[0]["machine"]
    info["load_average_1min"] = [min(p["machine"]["load_average_1min"][0] for p in parts),
                                 max(p["machine"]["load_average_1min"][1] for p in parts)]
    first = parts[0]["args"]
    args.worlds, args.draws, args.seed, args.quick = ",".join(s["world"] for s in summaries), first["draws"], \
        first["seed"], first["quick"]
    seconds = max(p["seconds"] for p in parts)
    md = markdown(rows, summaries, searches, verdict, info, args, seconds, bool(searches))
    md = md.replace("min in all", f"min in all (the longest of {len(parts)} per-world runs side by side, merged with "
                    f"--merge; runs started {', '.join(p['machine']['date'] for p in parts)})", 1)
    payload = {"machine": info, "args": first, "merged_from": [str(p) for p in args.merge], "seconds": seconds,
               "worlds": summaries, "search": searches, "verdict": verdict, "rows": rows,
               "runs": [{"worlds": p["args"]["worlds"], "machine": p["machine"], "seconds": p["seconds"]} for p in parts]}
    json_path, md_path = save(args.name, payload, md, results_dir(args.quick))
    print(md)
    log(f"wrote {md_path} and {json_path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="demo,lowvar,mixture")
    parser.add_argument("--quick", action="store_true", help="small worlds, one short deep configuration")
    parser.add_argument("--kshots", default="0,10,100")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="deep_baseline")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--configs", type=int, default=2, help="deep configurations tried per world (seeded sample)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="combine per-world JSON results of earlier runs (e.g. run worlds in parallel) into --name")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    names = world_names(parser, args.worlds)
    kshots = tuple(int(k) for k in args.kshots.split(","))
    deep_on = has_torch()
    if deep_on:
        import torch
        torch.set_num_threads(1)
    else:
        log("torch is not installed: the deep rows are skipped (pip install torch, CPU build)")
    info = machine()
    load_start = os.getloadavg()[0]
    log(machine_lines(info))
    start = time.perf_counter()
    rows, summaries, searches = [], [], {}
    for name in names:
        t = time.perf_counter()
        overrides = dict(TINY if args.tiny else QUICK) if args.quick else {}
        if args.quick and name == "demo":
            overrides["n_ratings"] = None
        world = worlds.make(name, seed=args.seed, **overrides)
        dataset, truth = worlds.dataset(world), worlds.WorldTruth.from_world(world)
        r = world.ratings
        summaries.append({"world": name, "dim": world.config.dim, "scale": f"{world.config.low}-{world.config.high}",
                          "users": world.users.height, "images": world.images.height, "ratings": r.height,
                          "description": worlds.FAMILIES[name].summary})
        factories = {
            HEAD: lambda seed: PersonalScorer(random_state=seed, use_bias=False, use_taste=False, use_mf=False,
                                              use_head=False),
            MODEL: lambda seed: PersonalScorer(random_state=seed),
        }
        if deep_on:
            factories[DEEP], searched = deep_factory(dataset, args.seed, args.quick, log, args.configs)
            searches[name] = {"chosen": searched.chosen_, "trials": searched.search_,
                              "history_of_chosen": searched.history_}
        world_rows = evaluate_world(factories, dataset, truth, kshots=kshots, draws=args.draws, seed=args.seed,
                                    world=name, log=lambda m: log("  " + m))
        rows += world_rows
        summary = " ".join(f"{m}={_find(world_rows, name, 'pseudo_unseen', 10, m)['srocc']:.3f}"
                           for m in factories if _find(world_rows, name, "pseudo_unseen", 10, m))
        log(f"{name}: {time.perf_counter() - t:.0f}s | pseudo-unseen k=10 SROCC {summary}")
    seconds = time.perf_counter() - start
    info["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    verdict = verdicts(rows, names) if deep_on else {}
    payload = {"machine": info, "args": vars(args), "seconds": seconds, "worlds": summaries, "search": searches,
               "verdict": verdict, "rows": rows}
    md = markdown(rows, summaries, searches, verdict, info, args, seconds, deep_on)
    json_path, md_path = save(args.name, payload, md, results_dir(args.quick))
    print(md)
    log(f"wrote {md_path} and {json_path} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
