"""Command-line front end: turn images into embeddings with an ONNX encoder, ``python -m pamela_lite.embed``.

Runs the encoder in batches on the CPU, with the preprocessing its <encoder>.preprocess.json
declares (CLIP's otherwise); resumable (images already in --out are skipped); unreadable files
are listed in <out>.skipped.csv. Details: the library behind it, pamela_lite.encoder.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import polars as pl

from ._atomic import atomic_file
from .cli import Stopwatch, output_path, parser_for, run, show_progress
from .encoder import Encoder, embed_images, list_images, pamela_ids, relative_to_root
from .errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("embed", __doc__.split("\n\n")[1],
                        "{prog} --encoder clip_b32.onnx --images /data/PAMELA/images --pamela /data/PAMELA "
                        "--out /data/PAMELA/embeddings.parquet", defaults=True)
    parser.add_argument("--encoder", type=Path, required=True, help="ONNX image encoder (see embeddings/)")
    parser.add_argument("--images", type=Path, required=True,
                        help="folder of images (searched recursively; an image's id is its path relative to the "
                             "folder; hidden files and folders left out, linked folders followed), or a text file "
                             "listing one path per line (relative to the file's folder or absolute; the id is the "
                             "path as written; lines starting with # are comments)")
    parser.add_argument("--out", type=output_path, required=True, help="embeddings Parquet (created or extended)")
    parser.add_argument("--pamela", type=Path, help="PAMELA root: ids from its image_path → image_id")
    parser.add_argument("--batch", type=int, default=32, help="images per encoder call")
    parser.add_argument("--checkpoint", type=int, default=1024, help="append to --out every N images")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0: all cores)")
    parser.add_argument("--report", type=output_path,
                        help="skipped files report (.csv; files an earlier run skipped and no run has embedded since "
                             "stay listed); default <out>.skipped.csv")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch < 1 or args.checkpoint < 1:
        raise InputError(None, "--batch and --checkpoint must be at least 1")
    if args.out.suffix.lower() not in (".parquet", ".pq"):  # fit and predict read embeddings by their suffix
        raise InputError(args.out, "embeddings are written as Parquet: name the file .parquet")
    report_path = args.report or args.out.with_name(args.out.name + ".skipped.csv")
    _check_report_path(report_path, args)
    watch = Stopwatch(args.quiet)
    encoder = Encoder(args.encoder, args.threads)
    files = list_images(args.images)
    if not files:
        raise InputError(args.images, "holds no files to embed")
    absent = {}
    if args.pamela is not None:
        files, absent = _pamela_files(args.pamela, files, args.images, watch)
    report = embed_images(encoder, files, args.out, args.batch, args.checkpoint, progress=show_progress(args.quiet),
                          log_lines=not args.quiet and not show_progress(args.quiet),
                          root=args.pamela if args.pamela is not None  # PAMELA's ids are the dataset's own
                          else args.images if args.images.is_dir() else args.images.parent)
    report.skipped.extend((path, "in PAMELA's annotations, but there is no such file") for path in absent)
    # the id each skipped file would have had: what fit's "no embedding" message looks up
    ids = {str(path): image_id for path, image_id in files} | absent
    table = pl.DataFrame({"path": [p for p, _ in report.skipped], "reason": [r for _, r in report.skipped],
                          "image_id": [str(ids.get(p, "")) for p, _ in report.skipped]},
                         schema={"path": pl.String, "reason": pl.String, "image_id": pl.String})
    table = pl.concat([table, _still_skipped(report_path, args.out, set(ids), {str(i) for i in ids.values()})])
    if table.height:
        with atomic_file(report_path, ".csv") as tmp:
            table.write_csv(tmp)
    elif _is_skipped_report(report_path):  # a run before listed files that are embedded now
        report_path.unlink()
    if not report.embedded and not report.already_present:  # every file failed: nothing to fit on
        raise InputError(args.images, f"none of its {len(files)} file(s) could be embedded (why, per file: "
                                      f"{report_path})")
    earlier = table.height - len(report.skipped)
    watch.step(f"embedded {report.embedded} image(s) at {report.images_per_second:.1f} images/s, "
               f"{report.already_present} already in {args.out}, {len(report.skipped)} skipped"
               + (f" (listed in {report_path})" if report.skipped else "")
               + (f"; {report_path} still lists {earlier} file(s) an earlier run skipped" if earlier else ""))
    return 0


def _check_report_path(report: Path, args) -> None:
    """Refuse, before any work, a report that would be written over something else: the
    embeddings themselves, the encoder, the image list, or any file that is not a report."""
    if report.suffix.lower() != ".csv":
        raise InputError(report, "the skipped-files report is written as CSV: name it .csv")
    same = [name for name, path in (("--out", args.out), ("--encoder", args.encoder), ("--images", args.images))
            if report.absolute() == path.absolute()
            or (path.exists() and report.exists() and os.path.samefile(report, path))]
    if same:
        raise InputError(report, f"is also {same[0]}: the report would be written over it; choose another --report")
    if report.exists() and not _is_skipped_report(report):
        raise InputError(report, "exists and is not a skipped-files report of embed: it is not replaced; "
                                 "choose another --report")


def _still_skipped(report: Path, out: Path, tried: set[str], tried_ids: set[str]) -> pl.DataFrame:
    """The rows of an earlier run's report that still stand: files still there (a link to nothing
    counts) that this run did not try again, by path or by id, and that have no embedding in
    `out` now."""
    empty = pl.DataFrame(schema={"path": pl.String, "reason": pl.String, "image_id": pl.String})
    if not _is_skipped_report(report):
        return empty
    earlier = pl.read_csv(report, infer_schema=False)
    if "image_id" not in earlier.columns:
        earlier = earlier.with_columns(image_id=pl.lit("", pl.String))
    embedded = (pl.read_parquet(out, columns=["image_id"])["image_id"].cast(pl.String) if out.exists()
                else pl.Series([], dtype=pl.String))  # the ids only: the vectors may be gigabytes
    earlier = earlier.select("path", "reason", pl.col("image_id").fill_null(""))
    still_there = pl.Series([os.path.lexists(p) for p in earlier["path"].to_list()], dtype=pl.Boolean)
    return earlier.filter(still_there & ~pl.col("path").is_in(list(tried)) & ~pl.col("image_id").is_in(list(tried_ids))
                          & ~pl.col("image_id").is_in(embedded.implode()))


def _pamela_files(root: Path, files: list, images: Path, watch: Stopwatch) -> tuple[list, dict[str, object]]:
    """The files that are PAMELA images, with their image ids, and the annotated image paths
    under `images` that have no file, with their ids (they will have no embedding: fit would
    refuse them)."""
    mapping = pamela_ids(root)
    relative = {path: relative_to_root(path, root) for path, _ in files}  # once per file: it may resolve links
    matched = [(p, mapping[relative[p]]) for p, _ in files if relative[p] in mapping]
    unmatched = [str(p) for p, _ in files if relative[p] not in mapping]
    if not matched:
        raise InputError(images, f"none of its {len(files)} file(s) is an image_path of the annotations in {root} "
                                 f"(e.g. {unmatched[0] if unmatched else 'no file'} vs "
                                 f"{next(iter(mapping))}): pass the dataset root as --pamela and its images")
    if unmatched:
        watch.step(f"{len(unmatched)} file(s) are not in PAMELA's annotations and are left out, e.g. {unmatched[0]}")
    within = relative_to_root(images, root) if images.is_dir() else None
    found = {relative[p] for p, _ in matched}
    absent = {p: mapping[p] for p in mapping if p not in found and within is not None
              and (within == "." or p.startswith(within.rstrip("/") + "/")) and not (root / p).exists()}
    if absent:
        watch.step(f"{len(absent)} annotated image(s) under {images} have no file, e.g. {next(iter(absent))}: they "
                   "get no embedding (listed in the skipped-files report)")
    return matched, absent


def _is_skipped_report(path: Path) -> bool:
    """Whether `path` is a skipped-files report (a CSV of path, reason), which a run may remove."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().strip() in ("path,reason", "path,reason,image_id")  # embed's own, no other CSV
    except (OSError, UnicodeDecodeError):
        return False


if __name__ == "__main__":
    sys.exit(run(main))
