"""The gain-weighted taste search on and off, on world configurations the zoo does not use.

    python benchmarks/gain_ablation.py            # 14 configurations, one fit each per setting (~4 min)
    python benchmarks/gain_ablation.py --quick    # 3 small ones, results to benchmarks/results/quick/

The zoo (benchmarks/zoo.py) measures the model at each family's default size and seed 0 — the
worlds the gain weighting (``PersonalScorer(gain_bin=32)``, :meth:`TasteMoment.weighted`) was
measured on while it was built. This benchmark fits the same model with ``gain_bin=32`` and
``gain_bin=0`` (no weighting) on other seeds, dimensions and numbers of people (down to 150
people with 150 ratings each), and reports
test_seen per-user SROCC of both and their difference, with a paired bootstrap over the
people. Writes gain_ablation.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUICK_RESULTS, RESULTS, log, machine, machine_lines, save  # noqa: E402

from pamela_lite import worlds  # noqa: E402
from pamela_lite.metrics import evaluate_scores, paired_bootstrap, paired_differences, per_user  # noqa: E402
from pamela_lite.model import PersonalScorer  # noqa: E402

CONFIGS = (  # (family, overrides): seeds, sizes and dimensions the zoo's defaults do not use
    ("powerlaw", dict(seed=2, dim=768)),
    ("powerlaw", dict(seed=3, n_users=120)),
    ("sparse", dict(seed=2)),
    ("lowvar", dict(seed=2, dim=1024)),
    ("lowest", dict(seed=3, dim=512)),
    ("mixture", dict(seed=2)),
    ("hetero", dict(seed=2, dim=1152)),
    ("nonlinear", dict(seed=2)),
    ("categorical", dict(seed=2, dim=768)),
    # few people and few ratings each (150 x 150 on 1,200 images): where the gains are noisiest
    ("lowvar", dict(seed=0, n_users=150, n_images=1200, ratings_per_user=150)),
    ("lowvar", dict(seed=1, n_users=150, n_images=1200, ratings_per_user=150)),
    ("lowest", dict(seed=0, n_users=150, n_images=1200, ratings_per_user=150)),
    ("powerlaw", dict(seed=0, n_users=150, n_images=1200, ratings_per_user=150)),
    ("sparse", dict(seed=0, n_users=150, n_images=1200)),
)
QUICK = (("powerlaw", dict(seed=2, dim=384, n_users=80, n_images=1500)),
         ("lowvar", dict(seed=2, n_users=80, n_images=1500)),
         ("sparse", dict(seed=2, n_users=80, n_images=1500)))
SETTINGS = {"gain_bin=32 (default)": 32, "gain_bin=0 (unweighted)": 0}


def scored(world: worlds.World, gain_bin: int, seed: int):
    """test_seen rows of the seen people with the model's score, and the learned directions kept."""
    dataset = worlds.dataset(world)
    train = dataset.split("train")
    model = PersonalScorer(random_state=seed, gain_bin=gain_bin).fit(
        train, dataset.embeddings, dataset.scale, validation=dataset.split("val_seen"))
    test = dataset.split("test_seen")
    query = test.filter(test["participant_id"].is_in(train["participant_id"].unique().implode()))
    frame = query.with_columns(score=model.predict(query, dataset.embeddings))
    return frame, model.taste_dimensions()[1]


def run(configs, seed_of_fit: int) -> list[dict]:
    rows = []
    for family, overrides in configs:
        t = time.perf_counter()
        world = worlds.make(family, **overrides)
        frames, learned = {}, {}
        for name, gain_bin in SETTINGS.items():
            frames[name], learned[name] = scored(world, gain_bin, seed_of_fit)
        on, off = (per_user(frames[name]) for name in SETTINGS)
        boot = paired_bootstrap(paired_differences(on, off), seed=seed_of_fit)
        rows.append({"family": family, "overrides": overrides,
                     "srocc": {name: evaluate_scores(f)["srocc"] for name, f in frames.items()},
                     "learned_directions": learned, "difference": boot, "seconds": time.perf_counter() - t})
        r = rows[-1]
        log(f"{family:<12} {overrides}: weighted {r['srocc'][next(iter(SETTINGS))]:.4f} "
            f"unweighted {r['srocc'][list(SETTINGS)[1]]:.4f} ({r['seconds']:.0f}s)")
    return rows


def markdown(rows, info, seconds, command) -> str:
    on, off = SETTINGS
    lines = ["# Gain-weighted taste search on and off", "", f"`{command}` — {machine_lines(info)}", "",
             f"{len(rows)} world configurations, one fit per setting (random_state 0), {seconds / 60:.1f} min. "
             "test_seen per-user SROCC of the seen people; *difference* = weighted − unweighted, mean over "
             "people with its paired-bootstrap 95% interval; *directions* = learned taste directions kept "
             "(weighted / unweighted).", "",
             "| family | configuration | weighted | unweighted | difference [95% CI] | directions |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        ci = r["difference"]["ci95"]
        config = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
        lines.append(f"| {r['family']} | {config} | {r['srocc'][on]:.3f} | {r['srocc'][off]:.3f} | "
                     f"{r['difference']['diff']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}] | "
                     f"{r['learned_directions'][on]} / {r['learned_directions'][off]} |")
    diffs = np.array([r["difference"]["diff"] for r in rows])
    lines += ["", f"Mean difference over configurations {diffs.mean():+.4f}; better on {int(np.sum(diffs > 0.0005))}, "
                  f"worse on {int(np.sum(diffs < -0.0005))}, within ±0.0005 on {int(np.sum(np.abs(diffs) <= 0.0005))}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 small worlds; results to benchmarks/results/quick/")
    parser.add_argument("--seed", type=int, default=0, help="the fits' random_state (the worlds' seeds are fixed)")
    args = parser.parse_args(argv)
    info = machine()
    log(machine_lines(info))
    start = time.perf_counter()
    rows = run(QUICK if args.quick else CONFIGS, args.seed)
    seconds = time.perf_counter() - start
    command = "python benchmarks/gain_ablation.py" + (" --quick" if args.quick else "")
    json_path, md_path = save("gain_ablation", {"machine": info, "seconds": seconds, "rows": rows},
                              markdown(rows, info, seconds, command), QUICK_RESULTS if args.quick else RESULTS)
    log(f"done in {seconds:.0f}s → {md_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
