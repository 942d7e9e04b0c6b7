"""A fitted scorer as one ONNX graph, and the files a device needs beside it.

The graph holds the whole scorer — embedding normalisation, population head, PCA, prototype
assignment and image factors, the taste and factor scores, the LightGBM residual trees and the
clip to the rating scale — so a device needs only onnxruntime to score.

Inputs (float32):

* ``embedding`` [N, D]: raw image embeddings (normalised inside the graph);
* ``user_state`` [N, S]: one state vector per pair, ``[bias, w (d), u (f), age_z, gender one-hot]``.

Outputs: ``score`` [N], the predicted rating (clipped to the scale), and ``utility`` [N], the
same before clipping — rank by it, since several images can share the top of the scale.

Beside the graph, :func:`export` writes ``<name>.fitted/``, the fitted scorer's parameter
files (:mod:`pamela_lite.fitted`, the same format as a model folder's), from which the device
folds in a new person (:mod:`pamela_lite.edge`), so a new person never requires a re-export;
and ``<name>.users.npz``, the known users' ids and states. The graph's metadata, the parameter
files and the users file all carry the digest of the fit they come from; the device refuses a
set that does not agree. :func:`export` also writes the two-stage graphs made from the scorer
(:mod:`pamela_lite.stages`) for cached catalogues (:mod:`pamela_lite.cached`). The command-line
front end is ``python -m pamela_lite.export``.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import __version__
from ._atomic import atomic_file
from .edge import fitted_path, users_path
from .errors import InputError
from .fitted import FittedScorer, write_users
from .model import PersonalScorer
from .stages import build_stages, write_stages

OPSET = 15  # onnxmltools' LightGBM converter supports opsets up to 15 here
ML_OPSET = 3
IR_VERSION = 8  # accepted by onnxruntime >= 1.10


def _tree_nodes(head: str, n_features: int, input_name: str, output_name: str):
    """The LightGBM head as ONNX nodes (TreeEnsembleRegressor), wired to our tensor names."""
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    converted = convert_lightgbm(lgb.Booster(model_str=head), initial_types=[("head_x", FloatTensorType([None, n_features]))],
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


def build_graph(fitted: FittedScorer, precision: str = "exact") -> onnx.ModelProto:
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
    exact = precision == "exact"
    f64 = np.float64 if exact else np.float32
    wide = TensorProto.DOUBLE if exact else TensorProto.FLOAT
    side = fitted.image_side
    D, d = side.pca_components.shape
    f = side.item_factors.shape[1]
    sl = fitted.layout
    S = fitted.state_dim
    g = S - sl["demographics"].start
    head_width = 4 + d + 2 * f + g  # [population, bias, taste, mf, pca, q, u, demographics]
    # Multiplying first and dividing the product by the norm equals normalising first, at a
    # fraction of the cost; population head and PCA share one matrix.
    # Whitening folds into the matrix; prototype logits are linear in the whitened coordinates.
    W = np.column_stack([side.pop_coef, side.pca_components * side.pca_scale])
    b = np.concatenate([[side.pop_intercept], -side.pca_mean @ side.pca_components * side.pca_scale])
    C = side.prototypes
    base_weights = np.zeros((head_width, 1))
    base_weights[:4, 0] = [1.0, 1.0, fitted.blend[0], fitted.blend[1]]
    arrays = {
        "W_image": W, "b_image": b,
        "W_logits": (C / side.pca_scale).T / side.assign_width,
        "b_logits": -0.5 * (C**2).sum(axis=1) / side.assign_width,
        "item_factors": side.item_factors, "base_weights": base_weights,
        "eps": np.array(1e-12), "mean": np.array(fitted.solver.mean),
    }
    init = [numpy_helper.from_array(np.asarray(v, dtype=f64), k) for k, v in arrays.items()]
    init += [numpy_helper.from_array(np.array(float(v), np.float32), k)
             for k, v in {"low32": fitted.scale[0], "high32": fitted.scale[1]}.items()]
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
    if fitted.head:
        tree_nodes, tree_init = _tree_nodes(fitted.head, head_width, "head_x", "head_out")
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
        "pamela_lite.scale": json.dumps(list(fitted.scale)),
        "pamela_lite.embedding_dim": str(D),
        "pamela_lite.state_dim": str(S),
        "pamela_lite.fit_sha256": fitted.digest(),  # the parameter and users files must carry the same
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


def merge_with_encoder(scorer: onnx.ModelProto, encoder: onnx.ModelProto) -> onnx.ModelProto:
    """Encoder and scorer in one graph: pixels and a user state in, score out (onnx.compose).

    Opsets are brought to the newer of the two with onnx's version converter; the encoder's
    output feeds the scorer's ``embedding`` input (the scorer normalises it itself).
    """
    from onnx import compose, version_converter

    def default_opset(m):
        return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))

    if not encoder.graph.input or not encoder.graph.output:  # its first input and output are used, as embed does
        raise InputError(None, "not an image encoder: its graph has no input or no output")
    dims = encoder.graph.output[0].type.tensor_type.shape.dim
    out_dim = dims[-1].dim_value if len(dims) else 0
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
    """Write ``path`` (the ONNX scorer), ``<stem>.fitted/`` and ``<stem>.users.npz`` beside it, each atomically.

    Also the two-stage graphs for cached catalogues (``<stem>.image_features.onnx``,
    ``<stem>.user_score.onnx``; :mod:`pamela_lite.stages`), and with `encoder`,
    ``<stem>.pixels.onnx``: encoder and scorer merged. Every graph is built and checked in memory
    first, so a failure writes nothing. Returns (scorer, users file).
    """
    path = Path(path)
    model._check_fitted()
    fitted = model.fitted_
    onnx_model = build_graph(fitted, precision)
    merged = merge_with_encoder(onnx_model, encoder) if encoder is not None else None
    stages = build_stages(onnx_model)
    fitted.save(fitted_path(path))
    sidecar = write_users(users_path(path), model.users_, model.user_states_, fitted.digest())
    with atomic_file(path, ".onnx") as tmp:
        Path(tmp).write_bytes(onnx_model.SerializeToString())
    if merged is not None:
        with atomic_file(pixels_path(path), ".onnx") as tmp:
            onnx.save(merged, tmp)
    write_stages(stages, path)  # tied to the scorer by the fit digest they carry (pamela_lite.cached)
    return path, sidecar


def pixels_path(scorer_path: Path) -> Path:
    return scorer_path.with_name(scorer_path.stem + ".pixels.onnx")
