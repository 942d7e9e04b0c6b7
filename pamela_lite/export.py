"""Command-line front end: export a model folder to one ONNX scorer, ``python -m pamela_lite.export``.

Writes the graph (:mod:`pamela_lite.onnx_scorer`), the fitted scorer's parameter files beside it
(``<name>.fitted/``, from which a device folds in new people) and the known users' states
(``<name>.users.npz``), each atomically. Devices read the three with :mod:`pamela_lite.edge`.
The two-stage graphs for cached catalogues (``<name>.image_features.onnx``,
``<name>.user_score.onnx``; :mod:`pamela_lite.stages`) are written beside them too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from ._atomic import write_text
from .cli import Stopwatch, output_path, parser_for, run
from .errors import InputError
from .model import PersonalScorer
from .onnx_scorer import export, pixels_path


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("export", "Export a fitted model folder to one ONNX scorer, plus the fitted parameters "
                                  "(<name>.fitted/) and the known users' states (<name>.users.npz) beside it.",
                        "{prog} --model runs/model --out runs/scorer.onnx")
    parser.add_argument("--model", type=Path, required=True, help="model folder written by pamela_lite.fit")
    parser.add_argument("--out", type=output_path, required=True, help="ONNX file to write, e.g. scorer.onnx")
    parser.add_argument("--precision", choices=("exact", "fast"), default="exact",
                        help="exact: float64 image side, scores match predict (without catalogue corrections) to "
                             "float rounding (the README gives the measured figures); fast: float32 throughout, "
                             "faster, rare pairs differ by a tree leaf")
    parser.add_argument("--encoder", type=Path,
                        help="also write <out stem>.pixels.onnx: this ONNX image encoder and the scorer in one "
                             "graph (pixels + user_state in, score out)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.suffix.lower() != ".onnx":  # score, cache and the device find its sidecars by this name
        raise InputError(args.out, "the scorer is written as ONNX: name the file .onnx")
    watch = Stopwatch(args.quiet)
    model = PersonalScorer.load(args.model)
    encoder = None
    if args.encoder is not None:
        if not args.encoder.exists():
            raise InputError(args.encoder, "no such encoder file")
        if args.encoder.is_file() and args.encoder.stat().st_size == 0:  # onnx loads it as an empty model
            raise InputError(args.encoder, "the file is empty")
        try:
            encoder = onnx.load(args.encoder)
        except Exception as err:
            raise InputError(args.encoder, f"cannot read as ONNX: {str(err).splitlines()[0]}") from None
    try:
        onnx_path, sidecar = export(model, args.out, args.precision, encoder)
    except InputError as err:
        raise InputError(args.encoder, err.problem) from None
    watch.step(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB), its parameters, its two-stage "
               f"graphs (for pamela_lite.cache) and {sidecar} ({len(model.users_)} known users)")
    if model.fitted_.catalogue is not None:
        watch.step(f"note: the model's per-image catalogue corrections ({len(model.fitted_.catalogue.image_ids)} training "
                   "images) are not in the ONNX scorer, which scores every image by its embedding; "
                   "compare it with predict --no-catalogue")
    if encoder is not None:
        preprocess = args.encoder.with_name(args.encoder.stem + ".preprocess.json")
        merged = pixels_path(onnx_path)
        if preprocess.exists():
            write_text(merged.with_name(merged.stem + ".preprocess.json"), preprocess.read_text())
        watch.step(f"wrote {merged}: pixels and user_state in, score out")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
