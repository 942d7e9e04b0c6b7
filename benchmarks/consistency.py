"""Consistency curve: does the model close the gap to the references as users grow?

    python benchmarks/consistency.py                 # lowvar and powerlaw at 1x, 2x, 4x users (~10 min)
    python benchmarks/consistency.py --quick         # small worlds, results to benchmarks/results/quick/

A model that discovers the taste space from the ratings should approach the oracle subspace
(the same model handed the world's true taste basis) as more people rate; a fixed PCA-32 taste
space cannot, whatever the number of users. Each world keeps its catalogue and ratings per
user (350) and multiplies the users; test_seen per-user SROCC for the population head, PCA-32
taste, pamela_lite (learned directions), the oracle subspace, the true-taste ridge and the
noise ceiling. Writes consistency.{md,json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import QUICK_RESULTS, RESULTS, log, machine, machine_lines, save  # noqa: E402
from zoo import BEFORE, HEAD, MODEL, ORACLE, factories  # noqa: E402

from pamela_lite import worlds  # noqa: E402
from pamela_lite.world_eval import CEILING, RIDGE, evaluate_world  # noqa: E402

ROWS = (HEAD, BEFORE, MODEL, ORACLE, RIDGE, CEILING)


def run(names, multipliers, base_users, n_images, per_user, seed) -> list[dict]:
    rows = []
    for name in names:
        for mult in multipliers:
            t = time.perf_counter()
            world = worlds.make(name, seed=seed, n_users=base_users * mult, n_images=n_images,
                                ratings_per_user=per_user)
            truth = worlds.WorldTruth.from_world(world)
            found = evaluate_world(factories(truth), worlds.dataset(world), truth, protocols=("test_seen",),
                                   seed=seed, world=name)
            for r in found:
                rows.append({**r, "users": base_users * mult, "multiplier": mult})
            got = {r["model"]: r["srocc"] for r in found}
            log(f"{name} x{mult} ({base_users * mult} users): " + ", ".join(f"{m} {got.get(m, float('nan')):.3f}"
                                                                         for m in ROWS)
                + f" [{time.perf_counter() - t:.0f}s]")
    return rows


def markdown(rows, info, args) -> str:
    out = ["# Consistency curve", "", f"`python benchmarks/consistency.py{' --quick' if args.quick else ''}` — "
           f"seed {args.seed}; test_seen per-user SROCC; {args.per_user} ratings per user.", "",
           machine_lines(info), "", "| world | users | " + " | ".join(ROWS) + " | closed |",
           "|---|---:|" + "---:|" * (len(ROWS) + 1)]
    keys = sorted({(r["world"], r["users"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for world, users in keys:
        got = {r["model"]: r["srocc"] for r in rows if r["world"] == world and r["users"] == users}
        closed = "–"
        if ORACLE in got and got[ORACLE] - got[BEFORE] >= 0.01:
            closed = f"{(got[MODEL] - got[BEFORE]) / (got[ORACLE] - got[BEFORE]):.2f}"
        out.append(f"| {world} | {users} | " + " | ".join(f"{got[m]:.3f}" if m in got else "–" for m in ROWS)
                   + f" | {closed} |")
    out += ["", "*closed* = (pamela_lite − PCA-32) / (oracle subspace − PCA-32): the share of what "
                "knowing the true taste directions would add that the learned directions achieve."]
    return "\n".join(out) + "\n"


def plot(rows, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = sorted({r["world"] for r in rows})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        for model in ROWS:
            pts = sorted((r["users"], r["srocc"]) for r in rows if r["world"] == name and r["model"] == model)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set_title(name)
        ax.set_xlabel("users (350 ratings each)")
        ax.set_ylabel("test_seen SROCC")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default="lowvar,powerlaw", help="comma-separated world families")
    parser.add_argument("--multipliers", default="1,2,4", help="users as multiples of 200")
    parser.add_argument("--per-user", type=int, default=350, help="ratings per user")
    parser.add_argument("--quick", action="store_true", help="small worlds; results to benchmarks/results/quick/")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = machine()
    log(machine_lines(info))
    base, images = (200, 5000) if not args.quick else (40, 600)
    per_user = args.per_user if not args.quick else 60
    args.per_user = per_user
    rows = run(args.worlds.split(","), [int(m) for m in args.multipliers.split(",")], base, images, per_user,
               args.seed)
    folder = QUICK_RESULTS if args.quick else RESULTS
    json_path, md_path = save("consistency", {"machine": info, "rows": rows}, markdown(rows, info, args), folder)
    plot(rows, folder / "consistency.png")
    log(f"wrote {md_path}, {json_path} and consistency.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
