"""Batch scoring on Dask: equal to the single-machine path, resumable, refusing mixed jobs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from distributed import Client, LocalCluster

from pamela_lite import distributed as dd
from pamela_lite import score
from pamela_lite.cached import write_cache
from pamela_lite.cli import run
from pamela_lite.edge import EdgeScorer
from pamela_lite.errors import InputError


@pytest.fixture(scope="module")
def client():
    """An in-process LocalCluster with 2 workers (threads, so it starts in well under a second)."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def cache_path(exported, dataset):
    edge = EdgeScorer(exported)
    path = exported.with_name("catalogue.features.npz")
    write_cache(path, edge.cache_features(dataset.embeddings.matrix, dataset.embeddings.ids.to_numpy()))
    return path


@pytest.fixture(scope="module")
def pairs_path(fitted, dataset, exported):
    rng = np.random.default_rng(0)
    n = 2_500
    frame = pl.DataFrame({"participant_id": [fitted.users_[k] for k in rng.integers(0, len(fitted.users_), n)],
                          "image_id": dataset.embeddings.ids.gather(rng.integers(0, len(dataset.embeddings.ids), n))})
    path = exported.with_name("pairs.parquet")
    frame.write_parquet(path)
    return path


def _run(client, exported, cache_path, out, **kwargs):
    edge = EdgeScorer(exported)
    job = dd.plan(edge, exported, cache_path, **kwargs)
    dd.prepare(out, job)
    return dd.run_job(client, job, out)


def test_pairs_on_dask_equal_the_single_machine_scores(client, exported, cache_path, pairs_path, dataset, tmp_path):
    report = _run(client, exported, cache_path, tmp_path / "out", pairs=pairs_path, partition_size=600)
    assert report.partitions == 5 and report.rows == 2_500
    single = tmp_path / "single.parquet"
    assert run(score.main, ["--scorer", str(exported), "--pairs", str(pairs_path), "--embeddings",
                            str(dataset.embeddings.source), "--out", str(single), "--quiet"]) == 0
    got, want = dd.read_results(tmp_path / "out"), pl.read_parquet(single)
    assert got.select("participant_id", "image_id").equals(want.select("participant_id", "image_id"))
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-6, rtol=0)


def test_users_by_catalogue_on_dask_equals_each_users_top_k(client, exported, cache_path, dataset, tmp_path):
    _run(client, exported, cache_path, tmp_path / "out", k=5, partition_size=7)
    got = dd.read_results(tmp_path / "out")
    edge = EdgeScorer(exported)
    assert got["participant_id"].unique(maintain_order=True).to_list() == edge.user_ids
    for user in edge.user_ids[:4]:
        best, scores = edge.top_k(user, dataset.embeddings.matrix, k=5)
        mine = got.filter(pl.col("participant_id") == user)
        assert mine["image_id"].to_list() == dataset.embeddings.ids.gather(best).to_list()
        np.testing.assert_allclose(mine["score"].to_numpy(), scores, atol=1e-4)


def test_finished_partitions_are_not_redone_after_a_crash(client, exported, cache_path, pairs_path, tmp_path):
    out = tmp_path / "out"
    _run(client, exported, cache_path, out, pairs=pairs_path, partition_size=500)
    first = dd.read_results(out)
    # A crash: partitions 1 and 3 never finished, and one left its temporary file behind.
    for index in (1, 3):
        dd.part_path(out, index).unlink()
    (out / ".part-00001.parquet.abc.tmp.parquet").write_bytes(b"half a partition")
    kept = {i: dd.part_path(out, i).stat().st_mtime_ns for i in (0, 2, 4)}
    report = _run(client, exported, cache_path, out, pairs=pairs_path, partition_size=500)
    assert (report.written, report.already_done) == (2, 3)
    assert {i: dd.part_path(out, i).stat().st_mtime_ns for i in (0, 2, 4)} == kept
    assert not list(out.glob(".part-*")) and dd.read_results(out).equals(first)


def test_unknown_participant_in_a_partition_is_one_clear_error(client, exported, cache_path, dataset, tmp_path):
    path = tmp_path / "pairs.parquet"
    pl.DataFrame({"participant_id": ["nobody"], "image_id": dataset.embeddings.ids.head(1)}).write_parquet(path)
    with pytest.raises(InputError, match="'nobody'") as err:
        _run(client, exported, cache_path, tmp_path / "out", pairs=path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_folder_holding_another_job_is_refused_before_any_work(exported, cache_path, pairs_path, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--dask", "--scorer", str(exported), "--cache", str(cache_path), "--out", str(out)]
    dd.prepare(out, dd.plan(EdgeScorer(exported), exported, cache_path, k=3,
                            request={"mode": "top", "k": 3}))
    code = run(score.main, [*args, "--pairs", str(pairs_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "_job.json" in err[0] and "another job" in err[0]
    assert not list(out.glob("part-*"))


def test_pairs_in_a_csv_are_refused_in_one_line(exported, cache_path, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("participant_id,image_id\np0000,1\n")
    code = run(score.main, ["--dask", "--scorer", str(exported), "--cache", str(cache_path),
                            "--pairs", str(tmp_path / "p.csv"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Parquet" in err[0]


def test_a_pairs_folder_whose_files_disagree_on_id_types_is_refused_naming_the_file(exported, cache_path,
                                                                                    pairs_path, tmp_path, capsys):
    # workers crashed on it ("unexpected SchemaError", exit 1) and left the job folder behind
    folder = tmp_path / "pairs"
    folder.mkdir()
    frame = pl.read_parquet(pairs_path).head(20)
    frame.write_parquet(folder / "a.parquet")
    frame.with_columns(pl.col("image_id").cast(pl.String)).write_parquet(folder / "b.parquet")
    out = tmp_path / "out"
    code = run(score.main, ["--dask", "--scorer", str(exported), "--cache", str(cache_path), "--pairs", str(folder),
                            "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "b.parquet: image_id is String here but" in err[0]
    assert "a.parquet" in err[0] and not out.exists()


def test_an_empty_pairs_file_is_named_as_empty_as_without_dask(exported, cache_path, tmp_path, capsys):
    (tmp_path / "p.parquet").write_bytes(b"")  # "cannot read as Parquet: ... File out of specification"
    code = run(score.main, ["--dask", "--scorer", str(exported), "--cache", str(cache_path),
                            "--pairs", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].endswith("p.parquet: the file is empty")


@pytest.mark.parametrize("extra, problem", [
    (["--top", "5", "--candidates", "3"], "--candidates 3 is below --top 5"),  # once: exit 0, 5 rows
    (["--pairs", "PAIRS", "--candidates", "3"], "go with --top K"),  # once silently ignored
    (["--pairs", "PAIRS", "--users", "USERS"], "go with --top K"),
])
def test_dask_options_are_checked_as_score_checks_them(exported, cache_path, pairs_path, tmp_path, capsys, extra, problem):
    extra = [str(pairs_path) if a == "PAIRS" else str(tmp_path / "u.csv") if a == "USERS" else a for a in extra]
    with pytest.raises(SystemExit) as stop:
        run(score.main, ["--dask", "--scorer", str(exported), "--cache", str(cache_path), "--out", str(tmp_path / "o"),
                         *extra])
    assert stop.value.code == 2 and problem in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_score_dask_command_runs_on_a_local_cluster(exported, dataset, pairs_path, tmp_path):
    out = tmp_path / "out"
    code = run(score.main, ["--dask", "--workers", "1", "--scorer", str(exported), "--pairs", str(pairs_path),
                            "--embeddings", str(dataset.embeddings.source), "--partition-size", "1000",
                            "--out", str(out), "--quiet"])
    assert code == 0 and (out / dd.DONE_FILE).exists()
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-0000{i}.parquet" for i in range(3)]


def test_a_fresh_job_that_fails_on_its_input_leaves_nothing_that_blocks_the_retry(exported, dataset, pairs_path,
                                                                                    tmp_path, capsys):
    # its _job.json (and partitions) once stayed: the retry with the pairs fixed was refused as another job
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"participant_id": ["nobody"], "image_id": dataset.embeddings.ids.head(1)}).write_parquet(bad)
    common = ["--dask", "--workers", "1", "--scorer", str(exported), "--embeddings", str(dataset.embeddings.source),
              "--out", str(tmp_path / "out"), "--quiet"]
    assert run(score.main, [*common, "--pairs", str(bad)]) == 2 and "'nobody'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    (tmp_path / "out").mkdir()  # a folder of the user's own, with files named like the job's
    (tmp_path / "out" / "_notes.txt").write_text("mine")
    assert run(score.main, [*common, "--pairs", str(bad)]) == 2
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["_notes.txt"]
    assert run(score.main, [*common, "--pairs", str(pairs_path)]) == 0


def test_context_users_on_dask_rank_as_score_top_does(exported, dataset, tmp_path):
    """--context: new users are folded in on the client and sent to the workers as a users file of the same fit."""
    from pamela_lite.fitted import read_users
    from pamela_lite.protocol import kshot_split

    context, _ = kshot_split(dataset.split("test_unseen"), 5, seed=0)
    context.write_parquet(tmp_path / "context.parquet")
    new = context["participant_id"].unique(maintain_order=True).cast(pl.String).to_list()
    pl.DataFrame({"participant_id": new}).write_parquet(tmp_path / "users.parquet")
    out, emb = tmp_path / "out", str(dataset.embeddings.source)
    assert run(score.main, ["--dask", "--workers", "1", "--scorer", str(exported), "--top", "5",
                            "--users", str(tmp_path / "users.parquet"), "--embeddings", emb,
                            "--context", str(tmp_path / "context.parquet"), "--out", str(out), "--quiet"]) == 0
    edge = EdgeScorer(exported)
    ids, _ = read_users(out / dd.CONTEXT_FILE, edge.fit_sha256, "scorer.onnx", "", edge.fitted.state_dim)
    assert [str(u) for u in ids] == new
    got = dd.read_results(out)
    user = new[0]
    assert run(score.main, ["--scorer", str(exported), "--top", "5", "--user", user, "--embeddings", emb,
                            "--context", str(tmp_path / "context.parquet"), "--out", str(tmp_path / "one.csv"),
                            "--quiet"]) == 0
    want = pl.read_csv(tmp_path / "one.csv")
    mine = got.filter(pl.col("participant_id") == user)
    assert mine["image_id"].cast(pl.String).to_list() == want["image_id"].cast(pl.String).to_list()
    np.testing.assert_allclose(mine["utility"].to_numpy(), want["utility"].to_numpy(), atol=1e-4)


def _documented_glob(text: str) -> str:
    """The file pattern of the pl.scan_parquet("...") line a text gives for a --dask output folder."""
    found = re.search(r'pl\.scan_parquet\("([^"]+)"\)', "".join(text.split()))  # help text may wrap it
    assert found, "no pl.scan_parquet(\"...\") line"
    return found.group(1)


def test_the_readmes_line_reads_a_dask_output_folder(client, exported, dataset, tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    pattern = _documented_glob(readme.split("## At scale", 1)[1].split("\n## ", 1)[0])
    out = tmp_path / "out"
    assert run(dd.main, ["--dask", client.scheduler.address, "--scorer", str(exported), "--top", "3",
                         "--embeddings", str(dataset.embeddings.source), "--partition-size", "16",
                         "--out", str(out), "--quiet"]) == 0
    assert (out / dd.CATALOGUE_FILE).exists()  # beside the partitions: the folder itself is no Parquet dataset
    got = pl.scan_parquet(str(out / Path(pattern).name)).collect()
    assert got.equals(dd.read_results(out)) and got.height == 3 * len(EdgeScorer(exported).user_ids)


@pytest.mark.parametrize("tool", [score, dd])
def test_help_says_how_to_read_the_dask_output_folder(tool):
    assert Path(_documented_glob(tool.build_parser().format_help())).name == "part-*.parquet"


@pytest.mark.parametrize("option", [["--user", "p0007"], ["--people", "people.csv"]])
def test_single_person_options_are_refused_by_name_under_dask(option, exported, cache_path, tmp_path, capsys):
    # --user p0007 was taken for --users and "p0007: no such file" came back
    with pytest.raises(SystemExit) as done:
        run(score.main, ["--dask", "--scorer", str(exported), "--cache", str(cache_path), "--top", "3", *option,
                         "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and f"{option[0]} is not available with --dask" in err[0]
