"""Export a fitted scorer to one ONNX file: ``python -m pamela_lite.export``.

The graph holds the whole scorer — embedding normalisation, population head, PCA, prototype
assignment and image factors, the taste and factor scores, the LightGBM residual trees and the
clip to the rating scale — so a device needs only onnxruntime to score.

Inputs (float32):

* ``embedding`` [N, D]: raw image embeddings (normalised inside the graph);
* ``user_state`` [N, S]: one state vector per pair, ``[bias, w (d), u (f), age_z, gender one-hot]``.

Outputs: ``score`` [N], the predicted rating (clipped to the scale), and ``utility`` [N], the
same before clipping — rank by it, since several images can share the top of the scale.

Beside the graph, ``<name>.users.npz`` (numpy, no pickle) ships the states of the users known
at fit time and the small arrays needed to fold in a new user on the device
(:mod:`pamela_lite.edge`), so a new person never requires a re-export.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from ._atomic import atomic_file, write_text
from .cli import Stopwatch, parser_for, run
from .edge import EDGE_FORMAT_VERSION, users_path
from .errors import InputError
from .model import PersonalScorer
from .stages import write_stages

OPSET = 15  # onnxmltools' LightGBM converter supports opsets up to 15 here
ML_OPSET = 3
IR_VERSION = 8  # accepted by onnxruntime >= 1.10


def _tree_nodes(model: PersonalScorer, n_features: int, input_name: str, output_name: str):
    """The LightGBM head as ONNX nodes (TreeEnsembleRegressor), wired to our tensor names."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    converted = convert_lightgbm(model.head_, initial_types=[("head_x", FloatTensorType([None, n_features]))],
                                 target_opset=OPSET, zipmap=False)
    graph = converted.graph
    rename = {graph.input[0].name: input_name, graph.output[0].name: output_name}
    nodes = []
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
        node.name = f"head/{node.name}"
        nodes.append(node)
    return nodes, list(graph.initializer)


def build_graph(model: PersonalScorer, precision: str = "exact") -> onnx.ModelProto:
    """The whole scorer as an ONNX model (see the module docstring for inputs and outputs).

    With ``precision="exact"`` the image side runs in float64 and is rounded to float32 only
    where the trees read it, as in Python (see ``features.l2_normalise``): both sides then hand
    the trees the same float32 values, so every split goes the same way as in LightGBM and the
    scores match ``predict`` to float rounding. ``precision="fast"`` runs everything in float32:
    about twice the throughput, but a feature computed within float32 rounding of a tree
    threshold can take the other branch, so a few pairs in ten thousand differ by a leaf value
    (measured in benchmarks/). The graph is kept to few nodes because at batch 1 each node costs
    about a microsecond of dispatch.
    """
    if precision not in ("exact", "fast"):
        raise ValueError(f"precision must be 'exact' or 'fast', not {precision!r}")
    model._check_fitted()
    exact = precision == "exact"
    f64 = np.float64 if exact else np.float32
    wide = TensorProto.DOUBLE if exact else TensorProto.FLOAT
    side = model.image_side_
    D, d = side.pca_components.shape
    f = side.item_factors.shape[1]
    sl = model.state_slices
    S = model.state_dim
    g = S - sl["demographics"].start
    head_width = 4 + d + 2 * f + g  # [population, bias, taste, mf, pca, q, u, demographics]
    # Multiplying first and dividing the product by the norm equals normalising first, at a
    # fraction of the cost; population head and PCA share one matrix.
    # Whitening folds into the matrix; prototype logits are linear in the whitened coordinates.
    W = np.column_stack([side.pop_coef, side.pca_components * side.pca_scale])
    b = np.concatenate([[side.pop_intercept], -side.pca_mean @ side.pca_components * side.pca_scale])
    C = side.prototypes
    base_weights = np.zeros((head_width, 1))
    base_weights[:4, 0] = [1.0, 1.0, model.blend_[0], model.blend_[1]]
    arrays = {
        "W_image": W, "b_image": b,
        "W_logits": (C / side.pca_scale).T / side.assign_width,
        "b_logits": -0.5 * (C**2).sum(axis=1) / side.assign_width,
        "item_factors": side.item_factors, "base_weights": base_weights,
        "eps": np.array(1e-12), "mean": np.array(model.mean_),
    }
    init = [numpy_helper.from_array(np.asarray(v, dtype=f64), k) for k, v in arrays.items()]
    init += [numpy_helper.from_array(np.array(float(v), np.float32), k)
             for k, v in {"low32": model.scale_.low, "high32": model.scale_.high}.items()]
    init += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in
             {"split_image": [1, d], "split_state": [s.stop - s.start for s in sl.values()],
              "axis1": [1]}.items()]
    n = helper.make_node
    nodes = [
        n("Cast", ["embedding"], ["embedding64"], to=wide),
        n("Cast", ["user_state"], ["state64"], to=wide),
        n("ReduceL2", ["embedding64"], ["norm"], axes=[1], keepdims=1),
        n("Max", ["norm", "eps"], ["norm_safe"]),
        n("MatMul", ["embedding64", "W_image"], ["lin_raw"]),
        n("Div", ["lin_raw", "norm_safe"], ["lin_unit"]),
        n("Add", ["lin_unit", "b_image"], ["lin"]),
        n("Split", ["lin", "split_image"], ["population", "pca"], axis=1),
        n("MatMul", ["pca", "W_logits"], ["logits_raw"]),
        n("Add", ["logits_raw", "b_logits"], ["logits"]),
        n("Softmax", ["logits"], ["assign"], axis=1),
        n("MatMul", ["assign", "item_factors"], ["image_factors"]),
        n("Split", ["state64", "split_state"], ["bias", "taste_w", "user_factors", "demographics"], axis=1),
        n("Mul", ["taste_w", "pca"], ["taste_terms"]),
        n("ReduceSum", ["taste_terms", "axis1"], ["taste"], keepdims=1),
        n("Mul", ["user_factors", "image_factors"], ["mf_terms"]),
        n("ReduceSum", ["mf_terms", "axis1"], ["mf"], keepdims=1),
        n("Concat", ["population", "bias", "taste", "mf", "pca", "image_factors", "user_factors",
                     "demographics"], ["head_x64"], axis=1),
        n("MatMul", ["head_x64", "base_weights"], ["base_raw"]),
        n("Add", ["base_raw", "mean"], ["base"]),
    ]
    total = "base"
    if model.head_ is not None:
        tree_nodes, tree_init = _tree_nodes(model, head_width, "head_x", "head_out")
        nodes += [n("Cast", ["head_x64"], ["head_x"], to=TensorProto.FLOAT), *tree_nodes,
                  n("Cast", ["head_out"], ["head_out64"], to=wide),
                  n("Add", ["base", "head_out64"], ["with_head"])]
        init += tree_init
        total = "with_head"
    nodes += [  # utility: unclipped, for ranking; score: the predicted rating on the scale
        n("Squeeze", [total, "axis1"], ["utility64"]),
        n("Cast", ["utility64"], ["utility"], to=TensorProto.FLOAT),
        n("Clip", ["utility", "low32", "high32"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes, "pamela_lite_scorer",
        inputs=[helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", D]),
                helper.make_tensor_value_info("user_state", TensorProto.FLOAT, ["N", S])],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]),
                 helper.make_tensor_value_info("utility", TensorProto.FLOAT, ["N"])],
        initializer=init,
    )
    onnx_model = helper.make_model(graph, producer_name="pamela_lite", producer_version=__version__,
                                   opset_imports=[helper.make_opsetid("", OPSET),
                                                  helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    onnx_model.ir_version = IR_VERSION
    onnx_model.doc_string = (__doc__ or "").split("\n\n")[1]
    meta = {
        "pamela_lite.version": __version__,
        "pamela_lite.inputs": "embedding: float32 [N, D] raw image embeddings; user_state: float32 [N, S]",
        "pamela_lite.state_layout": json.dumps({k: [s.start, s.stop] for k, s in sl.items()}),
        "pamela_lite.scale": json.dumps([model.scale_.low, model.scale_.high]),
        "pamela_lite.embedding_dim": str(D),
        "pamela_lite.state_dim": str(S),
    }
    for key, value in meta.items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx_model.metadata_props.add(key="pamela_lite.precision", value=precision)
    if not exact:  # casts to the type a tensor already has are no-ops: drop them
        _drop_identity_casts(onnx_model.graph)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def _drop_identity_casts(graph: onnx.GraphProto) -> None:
    """Remove float→float casts by renaming their outputs to their inputs downstream."""
    rename, keep = {}, []
    outputs = {value.name for value in graph.output}
    float_cast = [node for node in graph.node if node.op_type == "Cast"
                  and node.attribute[0].i == TensorProto.FLOAT and node.output[0] not in outputs]
    for node in float_cast:
        rename[node.output[0]] = node.input[0]
    for node in graph.node:
        if node in float_cast:
            continue
        node.input[:] = [rename.get(name, name) for name in node.input]
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def user_arrays(model: PersonalScorer, scorer_sha256: str) -> dict[str, np.ndarray]:
    """Known users' states and what fold-in on a device needs, as plain arrays."""
    side, solver = model.image_side_, model.solver_
    scalars = {
        "format_version": EDGE_FORMAT_VERSION, "scorer_sha256": scorer_sha256, "mean": solver.mean, "residual_scale": solver.residual_scale,
        "alpha": solver.alpha, "regularization": solver.regularization,
        "bias_shrinkage": solver.bias_shrinkage,
        "use_bias": solver.use_bias, "use_population": solver.use_population, "use_taste": solver.use_taste,
        "use_mf": solver.use_mf, "assign_width": side.assign_width, "pop_intercept": side.pop_intercept,
        "age_mean": model.age_mean_, "age_std": model.age_std_,
        "scale_low": model.scale_.low, "scale_high": model.scale_.high,
    }
    return {
        "user_ids": np.array([str(u) for u in model.users_]),
        "user_states": model.user_states_.astype(np.float32),
        "pop_coef": side.pop_coef, "pca_mean": side.pca_mean, "pca_components": side.pca_components,
        "pca_scale": side.pca_scale, "taste_precision": solver.taste_precision,
        "prototypes": side.prototypes, "item_factors": side.item_factors,
        "prior_coef": model.prior_coef_, "prior_intercept": model.prior_intercept_,
        "genders": np.array(model.genders_, dtype=str), "nationalities": np.array(model.nationalities_, dtype=str),
        "scalars": np.array(json.dumps(scalars)),
    }


def merge_with_encoder(scorer: onnx.ModelProto, encoder: onnx.ModelProto) -> onnx.ModelProto:
    """Encoder and scorer in one graph: pixels and a user state in, score out (onnx.compose).

    Opsets are brought to the newer of the two with onnx's version converter; the encoder's
    output feeds the scorer's ``embedding`` input (the scorer normalises it itself).
    """
    from onnx import compose, version_converter

    def default_opset(m):
        return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))

    out_dim = encoder.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    want = scorer.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    if out_dim and out_dim != want:
        raise InputError(None, f"the encoder gives {out_dim}-d embeddings; the scorer takes {want}-d")
    version = max(default_opset(scorer), default_opset(encoder))
    if default_opset(scorer) < version:
        scorer = version_converter.convert_version(scorer, version)
    if default_opset(encoder) < version:
        encoder = version_converter.convert_version(encoder, version)
    scorer.ir_version = encoder.ir_version = max(scorer.ir_version, encoder.ir_version)
    merged = compose.merge_models(encoder, scorer, io_map=[(encoder.graph.output[0].name, "embedding")],
                                  prefix1="encoder/", outputs=["score", "utility"])
    # The prefix keeps the encoder's internal names apart; its input keeps its own name.
    pixels, prefixed = encoder.graph.input[0].name, "encoder/" + encoder.graph.input[0].name
    for value in merged.graph.input:
        if value.name == prefixed:
            value.name = pixels
    for node in merged.graph.node:
        node.input[:] = [pixels if name == prefixed else name for name in node.input]
    onnx.checker.check_model(merged)
    return merged


def export(model: PersonalScorer, path: str | Path, precision: str = "exact",
           encoder: onnx.ModelProto | None = None) -> tuple[Path, Path]:
    """Write ``path`` (the ONNX scorer) and its ``.users.npz`` beside it, each atomically.

    With `encoder`, also ``<stem>.pixels.onnx``: encoder and scorer merged. Every graph is built
    and checked in memory first, so a failure writes nothing. The two-stage graphs for cached
    catalogues (``<stem>.image_features.onnx``, ``<stem>.user_score.onnx``) are written too.
    """
    path = Path(path)
    onnx_model = build_graph(model, precision)
    merged = merge_with_encoder(onnx_model, encoder) if encoder is not None else None
    scorer_bytes = onnx_model.SerializeToString()
    # The users file records which scorer its states belong to; EdgeScorer refuses any other.
    arrays = user_arrays(model, hashlib.sha256(scorer_bytes).hexdigest())
    with atomic_file(path, ".onnx") as tmp:
        Path(tmp).write_bytes(scorer_bytes)
    sidecar = users_path(path)
    with atomic_file(sidecar, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    if merged is not None:
        with atomic_file(pixels_path(path), ".onnx") as tmp:
            onnx.save(merged, tmp)
    write_stages(onnx_model, path)  # two-stage graphs for cached catalogues (pamela_lite.stages)
    return path, sidecar


def pixels_path(scorer_path: Path) -> Path:
    return scorer_path.with_name(scorer_path.stem + ".pixels.onnx")


def build_parser() -> argparse.ArgumentParser:
    parser = parser_for("export", "Export a fitted model folder to one ONNX scorer plus the known users' "
                                  "states (<name>.users.npz) beside it.",
                        "{prog} --model runs/model --out runs/scorer.onnx")
    parser.add_argument("--model", type=Path, required=True, help="model folder written by pamela_lite.fit")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write, e.g. scorer.onnx")
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
    watch = Stopwatch(args.quiet)
    model = PersonalScorer.load(args.model)
    encoder = None
    if args.encoder is not None:
        if not args.encoder.exists():
            raise InputError(args.encoder, "no such encoder file")
        try:
            encoder = onnx.load(args.encoder)
        except Exception as err:
            raise InputError(args.encoder, f"cannot read as ONNX: {str(err).splitlines()[0]}") from None
    try:
        onnx_path, sidecar = export(model, args.out, args.precision, encoder)
    except InputError as err:
        raise InputError(args.encoder, err.problem) from None
    watch.step(f"wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.2f} MB) and {sidecar} "
               f"({len(model.users_)} known users)")
    if model.catalogue_ is not None:
        watch.step(f"note: the model's per-image catalogue corrections ({len(model.catalogue_.image_ids)} training "
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
