"""Batch scoring on Dask: ``python -m pamela_lite.distributed`` (or ``score --dask [ADDRESS]``).

Two jobs, both over a cached catalogue (:mod:`pamela_lite.cached`; built from ``--embeddings``
into the output folder when no ``--cache`` is given):

* **pairs**: ``--pairs P`` (a Parquet file or a folder of Parquet files with participant_id,
  image_id) is cut into row ranges of ``--partition-size`` pairs; each partition is scored by
  the user-scoring graph and written as ``part-NNNNN.parquet`` (participant_id, image_id, score);
* **users x catalogue**: ``--top K`` ranks the whole catalogue for every user (all users the
  scorer knows, plus ``--context`` users, or those of ``--users FILE``), ``--partition-size``
  users per partition (participant_id, rank, image_id, score, utility); ``--candidates M`` is the
  retrieval mode.

Each Dask worker opens the scorer once (one onnxruntime session per worker) and memory-maps the
cache; tasks read their own slice of the inputs, so nothing large goes through the scheduler.
Results are **resumable**: each partition is written atomically (a temporary file renamed into
place), and a partition whose file exists is not computed again; ``_job.json`` records what the
folder holds, and a different job is refused rather than mixed in. ``_done.json`` appears when
every partition is written. Without an ADDRESS a LocalCluster of ``--workers`` processes runs
on this machine. Dask is an optional dependency: ``pip install "pamela_lite[dask]"``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ._atomic import atomic_file, write_text
from .cli import NO_REFIT, Stopwatch, output_folder, parser_for, run
from .errors import InputError, preview

JOB_FILE, DONE_FILE, CATALOGUE_FILE, CONTEXT_FILE = "_job.json", "_done.json", "_catalogue.features.npz", "_context.npz"
JOB_FORMAT_VERSION = 2  # 2: the scorer identified by its fit digest and precision
DEFAULT_PAIRS_PER_PARTITION = 500_000
DEFAULT_USERS_PER_PARTITION = 64


@dataclass
class Job:
    """What a batch job computes; stored as ``_job.json`` so a resumed job is the same job."""

    mode: str  # "pairs" or "top"
    scorer: str
    fit_sha256: str  # the scorer's fit digest and precision: what its scores (and the cache) depend on
    precision: str
    cache: str
    partitions: int
    partition_size: int
    request: dict = field(default_factory=dict)  # the options and input files' identities as given
    pairs: list[str] = field(default_factory=list)  # mode "pairs": Parquet files
    rows: int = 0  # mode "pairs": number of pairs
    users: list[str] = field(default_factory=list)  # mode "top": every user, in order
    k: int = 0
    candidates: int | None = None
    context: str | None = None  # npz of folded-in users' states, in the output folder
    format_version: int = JOB_FORMAT_VERSION


@dataclass
class Report:
    """How a run went: partitions written now, found done from an earlier run, rows and time."""

    partitions: int
    written: int
    already_done: int
    rows: int
    seconds: float


def part_path(out: Path, index: int) -> Path:
    return out / f"part-{index:05d}.parquet"


def _identity(path: Path | None) -> list | None:
    """Cheap identity of an input file or folder: resolved path, size and modification time."""
    if path is None or not path.exists():
        return None
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return [str(path.resolve())] + [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def read_results(out: str | Path) -> pl.DataFrame:
    """Every partition of a finished (or partial) output folder, in partition order."""
    parts = sorted(Path(out).glob("part-*.parquet"))
    if not parts:
        raise InputError(out, "no result partitions in this folder")
    return pl.concat([pl.read_parquet(p) for p in parts])


# --------------------------------------------------------------------------- on the workers

_LOADED: dict = {}  # per worker: (key, scorer, cache, image index); one job's state at a time


def _worker_key() -> str:
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return "local"


def _load(job: dict):
    """The scorer (one onnxruntime session per worker), its users and the memory-mapped cache."""
    from .data import Embeddings
    from .edge import EdgeScorer

    key = (_worker_key(), job["fit_sha256"], job["precision"], job["cache"], job.get("context"))
    loaded = _LOADED.get(key[0])
    if loaded is None or loaded[0] != key:
        scorer = EdgeScorer(job["scorer"])
        if (scorer.fit_sha256, scorer.precision) != (job["fit_sha256"], job["precision"]):
            raise InputError(job["scorer"], "the scorer (its fit or precision) changed since this job started; use another --out")
        if job.get("context"):  # a users file of the same fit (pamela_lite.fitted)
            from .fitted import read_users
            ids, states = read_users(job["context"], scorer.fit_sha256, Path(job["scorer"]).name, "use another --out",
                                      scorer.fitted.state_dim)
            for user, state in zip(ids, states):
                scorer.add_user(str(user), state)
        cache = scorer.load_cache(job["cache"])
        index = Embeddings(pl.Series("image_id", cache.image_ids), cache.features, job["cache"])
        loaded = _LOADED[key[0]] = (key, scorer, cache, index)
    return loaded[1:]


def run_partition(index: int, job: dict, out: str) -> dict:
    """Compute and atomically write one partition (a task); input errors come back as data."""
    target = part_path(Path(out), index)
    if target.exists():  # finished by an earlier run
        return {"index": index, "rows": 0, "skipped": True}
    start = time.perf_counter()
    try:
        scorer, cache, images = _load(job)
        frame = _score_pairs(job, index, scorer, cache, images) if job["mode"] == "pairs" else \
            _rank_users(job, index, scorer, cache)
    except (InputError, ValueError) as err:  # ValueError: a cache file changed under the job (CacheError)
        source = getattr(err, "source", getattr(err, "path", None))
        return {"index": index, "error": [source, getattr(err, "problem", str(err))]}
    with atomic_file(target, ".parquet") as tmp:
        frame.write_parquet(tmp)
    return {"index": index, "rows": frame.height, "seconds": time.perf_counter() - start}


def _score_pairs(job: dict, index: int, scorer, cache, images) -> pl.DataFrame:
    size = job["partition_size"]
    pairs = pl.scan_parquet(job["pairs"]).select("participant_id", "image_id").slice(index * size, size).collect()
    source = job["pairs"][0] if len(job["pairs"]) == 1 else str(Path(job["pairs"][0]).parent)
    where = f"pairs {index * size + 1}-{index * size + pairs.height}"
    for column in ("participant_id", "image_id"):
        if pairs[column].null_count():
            raise InputError(source, f"{column} is missing in some of {where}")
    rows = images.rows(pairs["image_id"], f"{source} ({where})")
    try:
        states = scorer.states_of(pairs["participant_id"].cast(pl.String).to_list())
    except KeyError as err:
        unknown = getattr(err, "users", [])
        raise InputError(source, f"{len(unknown)} participant(s) in {where} unknown to the scorer and without "
                                 f"context ratings: {preview(unknown)}") from None
    scores = scorer.score_cached(cache.features[rows], states)
    return pairs.with_columns(score=pl.Series(scores.astype(np.float64)))


def _rank_users(job: dict, index: int, scorer, cache) -> pl.DataFrame:
    size = job["partition_size"]
    users = job["users"][index * size:(index + 1) * size]
    frames = []
    for user in users:
        best, utility = scorer.stages.top_k(scorer.state(user), cache, job["k"], job["candidates"])
        frames.append(pl.DataFrame({
            "participant_id": [user] * len(best), "rank": np.arange(1, len(best) + 1),
            "image_id": cache.image_ids[best], "score": np.clip(utility, *scorer.scale).astype(np.float64),
            "utility": utility.astype(np.float64)}))
    return pl.concat(frames)


# --------------------------------------------------------------------------- on the client


def run_job(client, job: Job, out: str | Path, progress=None) -> Report:
    """Run the partitions of `job` not yet in `out` on a Dask client; raises InputError on bad input."""
    from distributed import as_completed

    out = Path(out)
    start = time.perf_counter()
    for stale in out.glob(".part-*.tmp*"):  # a crashed run's unfinished partition
        stale.unlink(missing_ok=True)
    todo = [i for i in range(job.partitions) if not part_path(out, i).exists()]
    # sent to each worker once, not with every task; a fresh key (hash=False): an identical job run just
    # before may still be releasing the same data
    spec = client.scatter([asdict(job)], broadcast=True, hash=False)[0]  # in a list: one object, not per key
    futures = client.map(run_partition, todo, job=spec, out=str(out), pure=False)
    rows = written = 0
    for future in as_completed(futures):
        result = future.result()
        if "error" in result:
            client.cancel(futures)
            raise InputError(*result["error"])
        if not result.get("skipped"):
            rows += result["rows"]
            written += 1
            if progress:
                progress(written, len(todo))
    report = Report(job.partitions, written, job.partitions - len(todo), rows, time.perf_counter() - start)
    write_text(out / DONE_FILE, json.dumps(asdict(report), indent=1))
    return report


def _recorded(out: Path) -> dict | None:
    record = out / JOB_FILE
    if not record.exists():
        return None
    try:
        return json.loads(record.read_text())
    except ValueError:
        raise InputError(record, "is not readable JSON; delete the folder to start again") from None


def check_request(out: Path, request: dict) -> bool:
    """Before anything is written: refuse a folder holding another job; True when resuming this one."""
    before = _recorded(out)
    if before is None:
        if out.exists() and any(p.name.startswith("part-") for p in out.iterdir()):
            raise InputError(out, "holds result partitions but no _job.json; use another --out")
        return False
    differ = sorted(k for k in set(before.get("request", {})) | set(request)
                    if before.get("request", {}).get(k) != request.get(k))
    if differ:
        raise InputError(out / JOB_FILE, f"this folder holds the partitions of another job (differs in: "
                                         f"{', '.join(differ)}); use another --out, or delete it to start again")
    return True


def prepare(out: Path, job: Job) -> None:
    """Create the output folder with its ``_job.json``, or check that it holds this same job."""
    record = out / JOB_FILE
    before = _recorded(out)
    if before is not None:
        now = json.loads(json.dumps(asdict(job)))
        differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if differ:
            raise InputError(record, f"this folder holds the partitions of another job (differs in: "
                                     f"{', '.join(differ)}); use another --out, or delete it to start again")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text(record, json.dumps(asdict(job), indent=1))


def plan(scorer, scorer_path: Path, cache_path: Path, *, pairs: Path | None = None,
         k: int = 0, users: list[str] | None = None, candidates: int | None = None,
         partition_size: int | None = None, context: Path | None = None, request: dict | None = None) -> Job:
    """Check the inputs on the client and describe the job (nothing is computed here)."""
    from .cached import read_cache

    cache = read_cache(cache_path)
    scorer.stages.check(cache)
    common = dict(scorer=str(scorer_path.resolve()), fit_sha256=scorer.fit_sha256, precision=scorer.precision,
                  cache=str(cache_path.resolve()), context=str(context.resolve()) if context else None,
                  request=request or {})
    if pairs is not None:
        files = _pair_files(pairs)
        size = partition_size or DEFAULT_PAIRS_PER_PARTITION
        try:
            n = pl.scan_parquet(files).select(pl.len()).collect().item()
        except Exception as err:
            raise InputError(pairs, f"cannot read as Parquet: {str(err).splitlines()[0]}") from None
        if n == 0:
            raise InputError(pairs, "no pairs in the file")
        return Job("pairs", partitions=-(-n // size), partition_size=size, pairs=files, rows=n, **common)
    users = list(scorer.user_ids) if users is None else users
    size = partition_size or DEFAULT_USERS_PER_PARTITION
    return Job("top", partitions=-(-len(users) // size), partition_size=size, users=users, k=k,
               candidates=candidates, **common)


def _pair_files(pairs: Path) -> list[str]:
    if not pairs.exists():
        raise InputError(pairs, "no such file or folder")
    files = sorted(pairs.glob("*.parquet")) if pairs.is_dir() else [pairs]
    if not files:
        raise InputError(pairs, "no .parquet files in this folder")
    for f in files:
        if f.suffix.lower() not in (".parquet", ".pq"):
            raise InputError(f, "--dask reads pairs from Parquet (a file or a folder of files); "
                                "convert the table with polars first")
    first = None
    for f in files:  # each file's own schema: workers read slices across files, which must agree
        source = f if pairs.is_dir() else pairs
        if f.stat().st_size == 0:  # as the single-machine reader says it (Parquet's own error is cryptic)
            raise InputError(source, "the file is empty")
        try:
            schema = pl.scan_parquet(f).collect_schema()
        except Exception as err:
            raise InputError(source, f"cannot read as Parquet: {str(err).splitlines()[0]}") from None
        for column in ("participant_id", "image_id"):
            if column not in schema:
                raise InputError(source, f"no column {column!r} (columns: {', '.join(schema.names())})")
            if not (schema[column] == pl.String or schema[column].is_integer()):
                raise InputError(source, f"{column} must be integers or text, not {schema[column]}")
            if first is not None and schema[column] != first[1][column]:
                raise InputError(source, f"{column} is {schema[column]} here but {first[1][column]} in "
                                         f"{first[0].name}: write every file of the folder with the same types")
        first = first or (f, schema)
    return [str(f.resolve()) for f in files]


def connect(address: str | None, workers: int, processes: bool = True):
    """A Dask client: to the scheduler at `address`, or to a new LocalCluster on this machine."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise InputError(None, "--dask needs Dask: pip install \"pamela_lite[dask]\"") from None
    if address and address != "local":
        try:
            return Client(address, timeout="20s")
        except OSError as err:
            raise InputError(None, f"cannot reach the Dask scheduler at {address}: {err}") from None
    import logging
    for name in ("distributed", "bokeh", "tornado"):  # the tools log their own progress lines
        logging.getLogger(name).setLevel(logging.WARNING)
    # CRITICAL: on a busy machine a worker's heartbeat can race the cluster's shutdown and log a
    # traceback at ERROR; failures of the job itself come back as each partition's result.
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes, silence_logs=logging.CRITICAL,
                           dashboard_address=":0", scheduler_kwargs={"dashboard": False})
    return Client(cluster)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("score --dask", __doc__.split("\n\n")[1].split("Two jobs")[0] +
                        "Scores pairs, or ranks a catalogue for every user, as a resumable batch job on Dask; "
                        "results are Parquet partitions in the --out folder.",
                        "{prog} --scorer runs/scorer.onnx --top 10 --cache runs/catalogue.features.npz "
                        "--out runs/top10")
    parser.add_argument("--dask", nargs="?", const="local", default="local", metavar="ADDRESS",
                        help="Dask scheduler address (tcp://host:8786); without one, a LocalCluster here")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="LocalCluster only: worker processes (one thread each; default: one per core)")
    parser.add_argument("--scorer", type=Path, required=True, help="ONNX file written by pamela_lite.export")
    parser.add_argument("--pairs", type=Path, help="Parquet file or folder of Parquet files: participant_id, image_id")
    parser.add_argument("--top", type=int, help="rank the whole catalogue for every user and keep the best K")
    parser.add_argument("--users", type=Path, help="with --top: a table whose participant_id column lists the "
                                                   "users (default: every user the scorer knows, and --context's)")
    parser.add_argument("--cache", type=Path, help="feature cache of the catalogue (python -m pamela_lite.cache)")
    parser.add_argument("--embeddings", type=Path, help="embeddings Parquet: without --cache, its feature cache is "
                                                        "written into --out first; needed for --context")
    parser.add_argument("--context", type=Path, help="ratings of new users, folded in on the client first")
    parser.add_argument("--candidates", type=int, help="with --top: retrieval mode (trees on the best M only)")
    parser.add_argument("--partition-size", type=int,
                        help=f"pairs (default {DEFAULT_PAIRS_PER_PARTITION:,}) or users "
                             f"(default {DEFAULT_USERS_PER_PARTITION}) per partition")
    parser.add_argument("--out", type=output_folder, required=True,
                        help="output folder of Parquet partitions and the job's own _* files: read the results "
                             'with pl.scan_parquet("OUT/part-*.parquet")')
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    # score's single-person options, refused by name (argparse would call them unrecognized)
    for name in ("--user", "--people", "--refit-known"):
        parser.add_argument(name, help=argparse.SUPPRESS, default=None, nargs="?", const=True)
    return parser


def _discard_fresh_job(out: Path, before: set[str] | None) -> None:
    """Remove what a fresh job wrote into `out`: its own files and partitions that were not there
    `before` (the names `out` held, None when it did not exist), and `out` itself when this run
    created it. Anything else a user keeps there stays."""
    if not out.is_dir():
        return
    own = {JOB_FILE, DONE_FILE, CATALOGUE_FILE, CONTEXT_FILE}
    for item in out.iterdir():
        written = item.name in own or (item.name.startswith("part-") and item.suffix == ".parquet")
        if item.is_file() and written and item.name not in (before or set()):
            item.unlink()
    if before is None and not any(out.iterdir()):
        out.rmdir()


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    """The option rules (those of ``score``, plus the Dask job's own), before any work."""
    given = [f"--{name.replace('_', '-')}" for name in ("user", "people", "refit_known")
             if getattr(args, name) is not None]
    if given:
        parser.error(f"{given[0]} is not available with --dask, which scores pairs or ranks for many users "
                     f"(--top K with --users FILE, or everyone); run score without --dask for that")
    if (args.top is None) == (args.pairs is None):
        parser.error("give either --pairs P, or --top K")
    if args.cache is None and args.embeddings is None:
        parser.error("give --cache FILE (python -m pamela_lite.cache) or --embeddings FILE")
    if args.context is not None and args.embeddings is None:
        parser.error("--context needs --embeddings (to fold the new users in)")
    for name in ("top", "candidates", "partition_size", "workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pairs is not None and (args.users is not None or args.candidates is not None):
        parser.error("--users and --candidates go with --top K (the pairs file names its users and images)")
    if args.candidates is not None and args.candidates < args.top:  # the rule score applies
        parser.error(f"--candidates {args.candidates} is below --top {args.top}: the trees must see at least K images")
    if args.out.suffix.lower() in (".csv", ".parquet", ".json"):
        raise InputError(args.out, "with --dask, --out is a folder of Parquet partitions, not a table file")


def _job_inputs(args, scorer, out: Path, resuming: bool, watch: Stopwatch) -> tuple[Path, Path | None, list | None]:
    """On the client: the catalogue's feature cache, the context users' states and the --users list
    (cache path, users file or None, user ids or None)."""
    from .cache import build_cache
    from .data import read_embeddings, read_table
    from .fitted import write_users
    from .score import fold_in_context

    cache_path = args.cache
    if cache_path is None:  # the catalogue's features, computed once on the client
        cache_path = out / CATALOGUE_FILE
        if not (resuming and cache_path.exists()):
            build_cache(scorer, args.embeddings, cache_path)
            watch.step(f"cached the features of {args.embeddings} in {cache_path}")
    context = None
    if args.context is not None:
        known = len(scorer.user_ids)
        fold_in_context(scorer, args.context, read_embeddings(args.embeddings), remedy=NO_REFIT)
        context = out / CONTEXT_FILE
        # the same states on every run, as a users file tied to the fit (pamela_lite.fitted, its one writer)
        write_users(context, scorer.user_ids[known:], scorer.states[known:], scorer.fit_sha256)
    users = None
    if args.users is not None:
        table = read_table(args.users)
        if "participant_id" not in table.columns:
            raise InputError(args.users, "no column 'participant_id'")
        users = table["participant_id"].cast(pl.String).unique(maintain_order=True).to_list()
        known_ids = set(scorer.user_ids)
        unknown = [u for u in users if u not in known_ids]
        if unknown:
            raise InputError(args.users, f"{len(unknown)} participant(s) unknown to the scorer and without context "
                                         f"ratings: {preview(unknown)}")
    return cache_path, context, users


def _run_on_cluster(args, job: Job, out: Path, watch: Stopwatch):
    """Connect (or start a LocalCluster), run the job's missing partitions, close the cluster."""
    client = connect(args.dask, args.workers)
    try:
        where = args.dask if args.dask != "local" else f"a LocalCluster of {args.workers} worker(s)"
        watch.step(f"{job.mode} job: {job.partitions} partition(s) on {where}")
        step = max(1, job.partitions // 20)
        return run_job(client, job, out, progress=lambda n, total: watch.step(f"{n}/{total} partitions written")
                       if n % step == 0 or n == total else None)
    finally:
        cluster = getattr(client, "cluster", None)
        client.close()
        if cluster is not None:
            cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    watch = Stopwatch(args.quiet)
    from .cache import load_scorer_with_stages

    scorer = load_scorer_with_stages(args.scorer)
    out = args.out
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    request = {"fit_sha256": scorer.fit_sha256, "precision": scorer.precision, "mode": "pairs" if args.pairs else "top",
               "k": args.top, "candidates": args.candidates, "partition_size": args.partition_size}
    request.update({name: _identity(getattr(args, name)) for name in ("pairs", "cache", "embeddings", "context", "users")})
    resuming = check_request(out, request)  # before anything is written into `out`
    before = {item.name for item in out.iterdir()} if out.is_dir() else None
    try:
        cache_path, context, users = _job_inputs(args, scorer, out, resuming, watch)
        try:
            job = plan(scorer, args.scorer, cache_path, pairs=args.pairs, k=args.top or 0, users=users,
                       candidates=args.candidates, partition_size=args.partition_size, context=context, request=request)
        except ValueError as err:  # CacheError: a cache of another scorer or a damaged file
            raise InputError(getattr(err, "path", None), getattr(err, "problem", str(err))) from None
        prepare(out, job)
        report = _run_on_cluster(args, job, out, watch)
    except InputError:
        if not resuming:  # a fresh job that failed on its input leaves no folder that blocks the retry
            _discard_fresh_job(out, before)
        raise
    watch.step(f"wrote {report.written} partition(s), {report.rows:,} rows, in {report.seconds:.1f}s "
               f"({report.already_done} already done before this run) to {out}")
    return 0

if __name__ == "__main__":
    sys.exit(run(main))
