"""The world zoo: pamela_lite on world families it was not designed for, beside references.

    python benchmarks/zoo.py                      # every family at its default size, 3 fit seeds (~18 min)
    python benchmarks/zoo.py --quick              # small worlds, one fit seed, results to runs/zoo_quick/ (~2 min)
    python benchmarks/zoo.py --worlds lowvar,hetero --draws 3

For each world (``pamela_lite.worlds``): fit ``PersonalScorer`` and the population head
(``PersonalScorer(use_bias=False, use_taste=False, use_mf=False, use_head=False)``) through
their public API, and report per-user SROCC and pairwise accuracy on test_seen, on test_unseen
at k = 0, 10, 100 and on pseudo-unseen users (20% of the seen users held out of training, k
context ratings from their own train ratings, scored on their val_seen + test_seen), beside the
true-taste per-user ridge and the noise ceiling (``pamela_lite.world_eval.evaluate_world``).
test_seen is also refitted with further fit seeds (``--fit-seeds``, default 3): the spread over
seeds says which differences between the model, the model before the accuracy work and the
oracle subspace are larger than a refit's own variation.
Full runs write benchmarks/results/zoo.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine, machine_lines, save, world_names  # noqa: E402

from pamela_lite import worlds  # noqa: E402
from pamela_lite.model import PersonalScorer  # noqa: E402
from pamela_lite.world_eval import CEILING, RIDGE, evaluate_world  # noqa: E402

MODEL = "pamela_lite"
HEAD = "population head"
BEFORE = "before (PCA-32)"
ORACLE = "oracle subspace"
QUICK = dict(n_users=100, n_images=1500)
ROOT = Path(__file__).resolve().parent.parent


class OracleSubspace(PersonalScorer):
    """pamela_lite handed the world's true taste basis instead of learning directions.

    The realistic target for direction discovery: the same model, prior, head and fold-in, with
    the taste coordinates [top principal components, true basis] — what learning the basis
    perfectly would give. (No metadata blocks: where taste follows the metadata, the true basis
    holds those directions already.)
    """

    true_basis = None  # (D, b) in embedding space, set on the instance

    def _taste_map(self, x_images, resid, user_index, image_index, n_users, reference=None):
        white = self.whitening_
        k = min(self.n_components_, white.matrix.shape[1])  # as the model: the block its out-of-fold ratings chose
        basis = self.true_basis / np.std((x_images - white.mean) @ self.true_basis, axis=0)
        return white.mean, np.column_stack([white.matrix[:, :k], basis]), np.zeros((0, 0)), {}


def factories(truth=None) -> dict:
    made = {
        HEAD: lambda seed: PersonalScorer(random_state=seed, use_bias=False, use_taste=False, use_mf=False,
                                          use_head=False),
        BEFORE: lambda seed: PersonalScorer(random_state=seed, taste_basis="pca", taste_prior="moment",
                                            use_catalogue=False, tune=False),
        MODEL: lambda seed: PersonalScorer(random_state=seed),
    }
    if truth is not None and truth.taste_basis is not None and truth.taste_basis.shape[1]:
        def oracle(seed):
            model = OracleSubspace(random_state=seed, use_metadata=False)  # its _taste_map reads no metadata
            model.true_basis = np.asarray(truth.taste_basis, dtype=np.float64)
            return model
        made[ORACLE] = oracle
    return made


def world_summary(world: worlds.World, seconds: float) -> dict:
    r = world.ratings
    cfg = world.config
    diag = world.info["diagnostics"]
    return {
        "world": world.name, "dim": cfg.dim, "scale": f"{cfg.low}-{cfg.high}",
        "ids": "string" if r["participant_id"].dtype == pl.String else "int",
        "users": world.users.height, "images": world.images.height, "ratings": r.height,
        "raters_per_image": float(r.group_by("image_id").len()["len"].mean()),
        "ratings_per_user": float(r.group_by("participant_id").len()["len"].mean()),
        "features": len(world.feature_names), "basis": list(world.taste_basis.shape),
        "personal_r2_top32": diag["personal_r2_top32_pcs"], "personal_r2_linear": diag["personal_r2_linear_embedding"],
        "appeal_r2_linear": diag["appeal_r2_linear_embedding"], "seconds": seconds,
        "description": worlds.FAMILIES[world.name].summary, "notes": world.info.get("notes", ""),
    }


def _find(rows, world, protocol, k, model):
    for r in rows:
        if r["world"] == world and r["protocol"] == protocol and r["k"] == k and r["model"] == model:
            return r
    return None


def markdown(summaries, rows, seed_rows, info, args, seconds) -> str:
    order = (HEAD, MODEL, RIDGE, CEILING, BEFORE, ORACLE)
    out = [f"# World zoo{' (quick)' if args.quick else ''}", "",
           f"`{args.command}` — seed {args.seed}, k-shot = mean over "
           f"{args.draws} seeded context draws, {seconds / 60:.1f} min in all (1-min load average "
           f"{info['load_average_1min'][0]} at the start, {info['load_average_1min'][1]} at the end; the "
           f"pamela_lite fits, two per world and {args.fit_seeds - 1} test_seen refit(s), take most of the time).", "",
           machine_lines(info), "",
           "Per-user SROCC / pairwise accuracy. **head** = population head, **model** = pamela_lite "
           "(full), **ridge** = per-user ridge on the world's TRUE image features (+ appeal), fitted on "
           "the same training or context ratings, **ceiling** = the true expected rating. "
           "*gap* = share of the ridge's gain over the head that the model achieves "
           "((model − head) / (ridge − head)). pseudo_unseen: 20% of the seen users held out of "
           "training; k context ratings from their own train ratings; scored on their val_seen + "
           "test_seen.", "",
           "## Worlds", "",
           "| world | D | scale | ids | users | images | ratings | raters/img | ratings/user | features | "
           "taste R² top-32 PCs | taste R² linear | build s | what it tests |",
           "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summaries:
        out.append(f"| {s['world']} | {s['dim']} | {s['scale']} | {s['ids']} | {s['users']} | {s['images']} | "
                   f"{s['ratings']:,} | {s['raters_per_image']:.1f} | {s['ratings_per_user']:.0f} | {s['features']} | "
                   f"{s['personal_r2_top32']:.2f} | {s['personal_r2_linear']:.2f} | {s['seconds']:.1f} | "
                   f"{s['description']} |")
    out += ["", "*taste R²*: share of each person's image-level taste (true weights · true features) "
                "that is linear in the top 32 principal components / in the whole embedding "
                "(mean over 64 users).", "",
            "## Today's model against the model before the accuracy work and the oracle subspace (SROCC)", "",
            f"**{BEFORE}** is this project's model before the accuracy work (issue 8): taste only in the top "
            "32 principal components, the taste prior as the moment of point estimates (taste_prior="
            "\"moment\"), no catalogue corrections, no tuning; **model** adds learned taste directions, the "
            f"directions that predict the image metadata (group, style, type), the EM taste prior, catalogue "
            f"corrections, the tuned head and 8 or 32 principal components chosen on out-of-fold training "
            f"ratings; **{ORACLE}** "
            "is today's model handed the world's true taste basis beside the principal components it chooses "
            "the same way (the realistic target). *closed* = (model − before) / (oracle − before), shown "
            "when the oracle is at least 0.01 above before.", "",
            "| world | test_seen before / model / oracle | closed | pseudo-unseen k=10 head / before / model / oracle "
            "| model − head at k=10 |",
            "|---|---|---:|---|---:|"]
    for s in summaries:
        w = s["world"]
        ts = [_find(rows, w, "test_seen", None, m) for m in (BEFORE, MODEL, ORACLE)]
        p10 = [_find(rows, w, "pseudo_unseen", 10, m) for m in (HEAD, BEFORE, MODEL, ORACLE)]

        def fmt(rs):
            return " / ".join("–" if r is None else f"{r['srocc']:.3f}" for r in rs)

        closed = "–"
        if None not in ts and ts[2]["srocc"] - ts[0]["srocc"] >= 0.01:
            closed = f"{(ts[1]['srocc'] - ts[0]['srocc']) / (ts[2]['srocc'] - ts[0]['srocc']):.2f}"
        lift = "–" if p10[0] is None or p10[2] is None else f"{p10[2]['srocc'] - p10[0]['srocc']:+.3f}"
        out.append(f"| {w} | {fmt(ts)} | {closed} | {fmt(p10)} | {lift} |")
    out += seed_table(summaries, rows, seed_rows, args)
    out += ["", "## Summary (SROCC)", "",
            "| world | test_seen head / model / ridge / ceiling | gap | pseudo-unseen k=10 model / ridge | "
            "pseudo-unseen k=100 model / ridge | test_unseen k=10 model / ridge (users) |",
            "|---|---|---:|---|---|---|"]
    for s in summaries:
        w = s["world"]
        ts = [_find(rows, w, "test_seen", None, m) for m in order[:4]]
        p10 = [_find(rows, w, "pseudo_unseen", 10, m) for m in (MODEL, RIDGE)]
        p100 = [_find(rows, w, "pseudo_unseen", 100, m) for m in (MODEL, RIDGE)]
        u10 = [_find(rows, w, "test_unseen", 10, m) for m in (MODEL, RIDGE)]

        def fmt(rs):
            return " / ".join("–" if r is None else f"{r['srocc']:.3f}" for r in rs)

        out.append(f"| {w} | {fmt(ts)} | {_gap(ts)} | {fmt(p10)} | {fmt(p100)} | {fmt(u10)}"
                   f"{'' if u10[0] is None else ' (' + str(u10[0]['n_users']) + ')'} |")
    out += ["", "## All rows", "",
            "| world | protocol | k | SROCC head | model | ridge | ceiling | before | oracle | gap | pair acc head "
            "| model | ridge | ceiling | before | oracle | users | ctx/user |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = []
    for r in rows:
        key = (r["world"], r["protocol"], r["k"])
        if key not in keys:
            keys.append(key)
    for w, protocol, k in keys:
        rs = [_find(rows, w, protocol, k, m) for m in order]
        first = next(r for r in rs if r is not None)
        sr = " | ".join("–" if r is None else f"{r['srocc']:.3f}" for r in rs)
        pa = " | ".join("–" if r is None else f"{r['pairwise_acc']:.3f}" for r in rs)
        out.append(f"| {w} | {protocol} | {'' if k is None else k} | {sr} | {_gap(rs)} | {pa} | "
                   f"{first['n_users']} | {first['context_mean']:.0f} |")
    out += ["", "## What each world is", ""]
    for s in summaries:
        out.append(f"- **{s['world']}** — {s['description']}. {s['notes']}")
    return "\n".join(out) + "\n"


def fit_record(model) -> dict:
    """What one fit of the model chose: learned taste directions, metadata coordinates and the
    head the tuner kept."""
    tuning = model.fitted_.tuning
    principal, learned, metadata, _ = model.taste_dimensions()
    return {"principal_components": int(principal), "learned_directions": int(learned),
            "metadata_coordinates": int(sum(metadata.values())), "head": None if tuning is None else tuning["head"]}


def capturing(factories: dict, fits: list) -> dict:
    """The same factories; every model the MODEL factory makes is appended to `fits` (in fit order)."""
    def make(seed):
        model = factories[MODEL](seed)
        fits.append(model)
        return model
    return {**factories, MODEL: make}


def seed_table(summaries, rows, seed_rows, args) -> list[str]:
    """test_seen over fit seeds: mean and SD of before / model / oracle, the share closed, and what
    each fit of the model chose."""
    seeds = sorted({0} | {r["fit_seed"] for r in seed_rows})
    if len(seeds) < 2:
        return []
    all_rows = [{**r, "fit_seed": 0} for r in rows if r["protocol"] == "test_seen"] + seed_rows
    out = ["", f"### test_seen over {len(seeds)} fit seeds", "",
           f"The same world and split, every model refitted with random_state "
           f"{', '.join(str(args.seed + s) for s in seeds)} (the k-means prototypes, the taste search's half-splits "
           "and nulls, the out-of-fold splits and the trees change). Mean ± sample SD over the fits; "
           "*closed* per seed, then its mean and range; *per fit*: the model's SROCC, the principal "
           "components the fit chose (8 or 32), learned taste directions (+ metadata directions) and the "
           "residual head the tuner kept, in seed order.", "",
           "| world | before | model | oracle | model − before | closed, mean (range) | model per fit: SROCC, "
           "principal, directions, head |",
           "|---|---|---|---|---:|---|---|"]
    for s in summaries:
        w = s["world"]
        by_model = {m: [next((r["srocc"] for r in all_rows if r["world"] == w and r["model"] == m
                              and r["fit_seed"] == seed), None) for seed in seeds] for m in (BEFORE, MODEL, ORACLE)}

        def stat(values):
            v = [x for x in values if x is not None]
            return "–" if not v else f"{np.mean(v):.3f} ± {np.std(v, ddof=1 if len(v) > 1 else 0):.3f}"

        before, model, oracle = (by_model[m] for m in (BEFORE, MODEL, ORACLE))
        lift = [m - b for m, b in zip(model, before) if m is not None and b is not None]
        closed = [(m - b) / (o - b) for m, b, o in zip(model, before, oracle)
                  if None not in (m, b, o) and o - b >= 0.01]
        shown = "–" if not closed else f"{np.mean(closed):.2f} ({min(closed):.2f}–{max(closed):.2f})"
        per_fit = []
        for seed, value in zip(seeds, model):
            record = next((r.get("fit") for r in all_rows if r["world"] == w and r["model"] == MODEL
                           and r["fit_seed"] == seed), None) or {}
            metadata = f" + {record['metadata_coordinates']}" if record.get("metadata_coordinates") else ""
            per_fit.append(f"{'–' if value is None else f'{value:.3f}'}, {record.get('principal_components', '–')}, "
                           f"{record.get('learned_directions', '–')}"
                           f"{metadata}, {record.get('head') or '–'}")
        out.append(f"| {w} | {stat(before)} | {stat(model)} | {stat(oracle)} | "
                   f"{'–' if not lift else f'{np.mean(lift):+.3f}'} | {shown} | {'; '.join(per_fit)} |")
    return out


def _gap(rs) -> str:
    head, model, ridge = rs[0], rs[1], rs[2]
    if head is None or model is None or ridge is None or ridge["srocc"] - head["srocc"] < 0.02:
        return "–"
    return f"{(model['srocc'] - head['srocc']) / (ridge['srocc'] - head['srocc']):.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default=",".join(worlds.FAMILIES), help="comma-separated families (default all)")
    parser.add_argument("--quick", action="store_true", help="small worlds; results to --out (default runs/zoo_quick)")
    parser.add_argument("--kshots", default="0,10,100")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-seeds", type=int, default=None,
                        help="fits of test_seen per world with seeds seed, seed+1, ... (default 3; 1 with --quick; "
                             "1: no refits)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results folder (default benchmarks/results for a full run, runs/zoo_quick for --quick)")
    args = parser.parse_args(argv)
    # the command as run, for the results header (the defaults are not the only way it runs)
    args.command = " ".join(["python benchmarks/zoo.py", *(sys.argv[1:] if argv is None else argv)])
    if args.fit_seeds is None:
        args.fit_seeds = 1 if args.quick else 3
    if args.fit_seeds < 1:
        parser.error("--fit-seeds must be at least 1")
    names = world_names(parser, args.worlds)
    kshots = tuple(int(k) for k in args.kshots.split(","))
    info = machine()
    load_start = os.getloadavg()[0]
    log(machine_lines(info))
    start = time.perf_counter()
    rows, seed_rows, summaries = [], [], []
    for name in names:
        t = time.perf_counter()
        overrides = dict(QUICK) if args.quick else {}
        if args.quick and name == "demo":
            overrides["n_ratings"] = None
        world = worlds.make(name, seed=args.seed, **overrides)
        gen = time.perf_counter() - t
        summaries.append(world_summary(world, gen))
        truth = worlds.WorldTruth.from_world(world)
        fits: list = []  # the model's fits: the first is test_seen's (then pseudo-unseen's refit)
        world_rows = evaluate_world(capturing(factories(truth), fits), worlds.dataset(world), truth,
                                    kshots=kshots, draws=args.draws, seed=args.seed, world=name)
        for r in world_rows:
            if r["model"] == MODEL and r["protocol"] == "test_seen":
                r["fit"] = fit_record(fits[0])
        rows += world_rows
        refits = {m: f for m, f in factories(truth).items() if m != HEAD}
        for extra in range(1, args.fit_seeds):
            fits = []
            refit_rows = [{**r, "fit_seed": extra} for r in evaluate_world(
                capturing(refits, fits), worlds.dataset(world), None, protocols=("test_seen",),
                seed=args.seed + extra, world=name) if r["model"] in refits]
            for r in refit_rows:
                if r["model"] == MODEL:
                    r["fit"] = fit_record(fits[0])
            seed_rows += refit_rows
        ts = {r["model"]: r["srocc"] for r in world_rows if r["protocol"] == "test_seen"}
        p10 = {r["model"]: r["srocc"] for r in world_rows if r["protocol"] == "pseudo_unseen" and r["k"] == 10}
        log(f"[{len(summaries)}/{len(names)}] {name:<12} built {gen:4.1f}s, evaluated in "
            f"{time.perf_counter() - t - gen:5.1f}s | test_seen SROCC head {ts.get(HEAD, float('nan')):.3f} "
            f"model {ts.get(MODEL, float('nan')):.3f} ridge {ts.get(RIDGE, float('nan')):.3f} "
            f"ceiling {ts.get(CEILING, float('nan')):.3f} | pseudo-unseen k=10 model "
            f"{p10.get(MODEL, float('nan')):.3f} ridge {p10.get(RIDGE, float('nan')):.3f}")
    seconds = time.perf_counter() - start
    info["load_average_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]  # other jobs slow the fits
    payload = {"machine": info, "seed": args.seed, "draws": args.draws, "kshots": list(kshots), "quick": args.quick,
               "seconds": seconds, "worlds": summaries, "rows": rows, "fit_seed_rows": seed_rows,
               "fit_seeds": args.fit_seeds}
    md = markdown(summaries, rows, seed_rows, info, args, seconds)
    name = "zoo_quick" if args.quick else "zoo"
    out = args.out if args.out is not None else (ROOT / "runs" / "zoo_quick" if args.quick else None)
    if out is None:
        json_path, md_path = save(name, payload, md)
    else:
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / f"{name}.json", out / f"{name}.md"
        json_path.write_text(json.dumps(payload, indent=1, default=float))
        md_path.write_text(md)
    log(f"wrote {md_path} and {json_path} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
