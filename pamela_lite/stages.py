"""Two-stage scoring graphs, made from the one-file scorer (written by ``pamela_lite.onnx_scorer.export``).

Everything the one-file scorer computes from an embedding alone — normalisation, population
head, taste coordinates, prototype assignment, image factors — does not depend on the user, so a
catalogue's image features can be computed once and cached (:mod:`pamela_lite.cached`). This
module builds two graphs from the exported one-file scorer:

* the **image-feature graph** ``<stem>.image_features.onnx``: ``embedding`` float32 [N, D] →
  ``features`` [N, 1 + d + f] = ``[population p(x), taste coordinates z(x), image factors q(x)]``
  (float64 for an exact scorer, float32 for a fast one) — the scorer's own image-side nodes,
  cut out node for node;
* the **user-scoring graph** ``<stem>.user_score.onnx``: ``features`` [N, F] and ``user_state``
  float32 [M, S], M = N (pairs) or 1 (one user against N images) → ``score`` [N] and
  ``utility`` [N], as the one-file graph — rebuilt around the scorer's own trees and weights so
  that the per-pair work besides the trees is a few passes over the features (see
  :func:`_user_graph`; scores agree with the one-file graph to float rounding, checked to 1e-4).

Both are built from the one-file ONNX model, not from the fitted Python object; they carry its
metadata, and with it the digest of the fit (``pamela_lite.fit_sha256``) and the precision,
which tie them (and every cache made with them) to that scorer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._atomic import atomic_file
from .cached import IMAGE_STAGE, USER_STAGE, stage_paths

# What the stages read of the one-file graph (pamela_lite.onnx_scorer.build_graph): the tensors
# below (the image side is cut at them), the trees (TreeEnsemble nodes up to head_out), the
# initializers W_image, split_image, item_factors, base_weights, mean, split_state, low32, high32
# and axis1, and the state_layout metadata.
IMAGE_TENSORS = ("population", "pca", "image_factors")  # [N, 1], [N, d], [N, f]


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _needed_nodes(graph: onnx.GraphProto, outputs, available) -> list[onnx.NodeProto]:
    """The nodes that compute `outputs` from `available` tensors and initializers, in graph order."""
    producer = _producers(graph)
    initializers = {t.name for t in graph.initializer}
    keep, stack = set(), list(outputs)
    while stack:
        name = stack.pop()
        if name in available or name in initializers or name == "":
            continue
        if name not in producer:
            raise ValueError(f"the scorer graph has no tensor {name!r}: cannot cut it in two stages")
        node = producer[name]
        if id(node) not in keep:
            keep.add(id(node))
            stack.extend(node.input)
    return [node for node in graph.node if id(node) in keep]


def _initializers(graph: onnx.GraphProto, nodes) -> list[onnx.TensorProto]:
    used = {name for node in nodes for name in node.input}
    return [t for t in graph.initializer if t.name in used]


def _feature_widths(scorer: onnx.ModelProto) -> tuple[int, int, int]:
    """(1, d, f): widths of population, taste coordinates and image factors in the scorer."""
    inits = {t.name: numpy_helper.to_array(t) for t in scorer.graph.initializer}
    d = int(inits["split_image"][1])
    f = int(inits["item_factors"].shape[1])
    return 1, d, f


def _finish(graph: onnx.GraphProto, scorer: onnx.ModelProto, stage: str, extra_meta: dict) -> onnx.ModelProto:
    model = helper.make_model(graph, producer_name="pamela_lite", producer_version=scorer.producer_version,
                              opset_imports=list(scorer.opset_import))
    model.ir_version = scorer.ir_version
    for prop in scorer.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    for key, value in {"pamela_lite.stage": stage, **extra_meta}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_stages(scorer: onnx.ModelProto) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The image-feature graph and the user-scoring graph made from a one-file scorer (left unchanged).

    Both keep the scorer's metadata (fit digest, precision, state layout, ...) and add their stage,
    the feature layout and dtype, and the linear part's weights.
    """
    scorer = _copy(scorer)
    if not any(prop.key == "pamela_lite.fit_sha256" for prop in scorer.metadata_props):
        raise ValueError("the scorer graph records no fit digest (pamela_lite.fit_sha256): export it again")
    graph = scorer.graph
    embedding = graph.input[0]
    wide = next(t.data_type for t in graph.initializer if t.name == "W_image")
    widths = _feature_widths(scorer)
    n_features = sum(widths)
    starts = [0, widths[0], widths[0] + widths[1], n_features]
    layout = dict(zip(("population", "taste", "factors"), ([a, b] for a, b in zip(starts, starts[1:]))))
    meta = {"pamela_lite.feature_layout": json.dumps(layout),
            "pamela_lite.feature_dtype": "float64" if wide == TensorProto.DOUBLE else "float32",
            "pamela_lite.linear": json.dumps(_linear_weights(scorer))}

    # Stage 1: embedding → features (the scorer's own image-side nodes, then one Concat).
    image_nodes = _needed_nodes(graph, IMAGE_TENSORS, {embedding.name})
    image_nodes.append(helper.make_node("Concat", list(IMAGE_TENSORS), ["features"], axis=1, name="stage/features"))
    image_graph = helper.make_graph(
        image_nodes, "pamela_lite_image_features", inputs=[embedding],
        outputs=[helper.make_tensor_value_info("features", wide, ["N", n_features])],
        initializer=_initializers(graph, image_nodes))
    image_model = _finish(image_graph, scorer, IMAGE_STAGE, meta)

    # Stage 2: features + user state → score, utility.
    user_model = _finish(_user_graph(scorer, widths, wide), scorer, USER_STAGE, meta)
    return image_model, user_model


def _head_order(d: int, f: int, g: int) -> np.ndarray:
    """New column of each head column: the scorer's head reads
    ``[population, bias, taste, mf, pca (d), q (f), u (f), demographics (g)]``, the user-scoring
    graph ``[features (1 + d + f), population, taste, mf, bias, u, demographics]`` so that the
    cached features enter the trees as one block (the second population column, which comes
    with the taste and factor terms, is never read)."""
    n_features = 1 + d + f
    return np.concatenate([[0, n_features + 3, n_features + 1, n_features + 2],
                           1 + np.arange(d + f), n_features + 4 + np.arange(f + g)])


def _user_graph(scorer: onnx.ModelProto, widths, wide: int) -> onnx.GraphProto:
    """Stage 2: cached features [N, F] + user state [M, S] → score, utility, as the scorer computes them.

    Built from the scorer's initializers and its tree nodes, not cut node for node: the one-file
    graph assembles the head's input in float64 and casts it, which on cached features costs a
    third of the trees' own time. Here the per-pair work is one product of the features with
    ``[1, w, u]``, one small matrix product for the population, taste and factor terms, one float32
    concatenation that the trees read with their feature ids renumbered (`_head_order`); user-only
    columns come straight from the float32 state (the scorer's float32 → float64 → float32 round
    trip is exact). The taste and factor sums run in another order than the scorer's: in an exact
    graph they differ by float64 rounding before the cast to float32 the trees read; in a fast
    (float32) graph by float32 rounding, so, as between the fast scorer and ``predict``, a pair
    whose feature sits within rounding of a tree threshold can take the other branch.
    """
    graph = scorer.graph
    inits = {t.name: t for t in graph.initializer}
    layout = json.loads(next(p.value for p in scorer.metadata_props if p.key == "pamela_lite.state_layout"))
    _, d, f = widths
    n_features = sum(widths)
    g = layout["demographics"][1] - layout["demographics"][0]
    base_weights = numpy_helper.to_array(inits["base_weights"]).ravel()
    if base_weights[1] != 1.0:  # the bias enters the base as it is (onnx_scorer.build_graph)
        raise ValueError("the scorer graph weighs the user bias in its base: export it again with this pamela_lite")
    dtype = np.float64 if wide == TensorProto.DOUBLE else np.float32
    selector = np.zeros((n_features, 3))  # [population, taste, mf] = ([1, w, u] * features) @ selector
    selector[0, 0] = 1.0
    selector[1:1 + d, 1] = 1.0
    selector[1 + d:, 2] = 1.0
    arrays = {"stage/one": np.ones((1, 1)), "stage/selector": selector, "stage/blend": base_weights[[0, 2, 3], None],
              "mean": numpy_helper.to_array(inits["mean"])}
    new_inits = [numpy_helper.from_array(np.asarray(v, dtype=dtype), k) for k, v in arrays.items()]
    new_inits += [inits[name] for name in ("split_state", "low32", "high32", "axis1")]
    new_inits.append(numpy_helper.from_array(np.array([1], np.int64), "stage/one_row"))
    n = helper.make_node
    state = "user_state" if wide == TensorProto.FLOAT else "state64"
    nodes = [n("Cast", ["user_state"], ["state64"], to=wide)] if state == "state64" else []
    nodes += [
        n("Split", [state, "split_state"], ["bias", "taste_w", "user_factors", "demographics"], axis=1),
        n("Shape", ["bias"], ["stage/user_rows"]),
        n("Expand", ["stage/one", "stage/user_rows"], ["stage/ones"]),
        n("Concat", ["stage/ones", "taste_w", "user_factors"], ["stage/coef"], axis=1),
        n("Shape", ["user_state"], ["stage/state_shape"], end=1),
        n("Equal", ["stage/state_shape", "stage/one_row"], ["stage/one_user_1"]),
        n("Squeeze", ["stage/one_user_1"], ["stage/one_user"]),
        # One user against N images: fold the state into the selector, one matrix product over the
        # features. One state per pair: the products per pair, then the selector.
        n("If", ["stage/one_user"], ["stage/pop_taste_mf"],
          then_branch=_branch("one_user", [
              n("Transpose", ["stage/coef"], ["stage/coef_t"], perm=[1, 0]),
              n("Mul", ["stage/coef_t", "stage/selector"], ["stage/user_selector"]),
              n("MatMul", ["features", "stage/user_selector"], ["stage/taste_mf_one"])], "stage/taste_mf_one", wide),
          else_branch=_branch("per_pair", [
              n("Mul", ["features", "stage/coef"], ["stage/terms"]),
              n("MatMul", ["stage/terms", "stage/selector"], ["stage/taste_mf_pairs"])], "stage/taste_mf_pairs", wide)),
        n("MatMul", ["stage/pop_taste_mf", "stage/blend"], ["stage/blended"]),
        n("Add", ["bias", "mean"], ["stage/bias_mean"]),  # [M, 1]: per user, not per pair
        n("Add", ["stage/blended", "stage/bias_mean"], ["base"]),
    ]
    total = "base"
    ensemble = [node for node in graph.node if node.op_type.startswith("TreeEnsemble")]
    # the trees' input: head_x, or head_x64 in a fast graph (whose identity casts were dropped)
    trees = _needed_nodes(graph, ["head_out"], {ensemble[0].input[0]}) if ensemble else []
    if trees:
        bias32, factors32, demo32 = ("bias", "user_factors", "demographics") if state == "user_state" else \
            ("stage/bias32", "stage/factors32", "stage/demographics32")
        if state == "state64":
            nodes += [n("Split", ["user_state", "split_state"], [bias32, "stage/taste_w32", factors32, demo32], axis=1),
                      n("Cast", ["features"], ["stage/features32"], to=TensorProto.FLOAT),
                      n("Cast", ["stage/pop_taste_mf"], ["stage/pop_taste_mf32"], to=TensorProto.FLOAT)]
        features32 = "stage/features32" if state == "state64" else "features"
        taste_mf32 = "stage/pop_taste_mf32" if state == "state64" else "stage/pop_taste_mf"
        nodes += [n("Shape", ["stage/blended"], ["stage/rows"])]  # [N, 1]: user-only columns broadcast to N rows
        nodes += [n("Expand", [name, "stage/rows"], [f"{name}/rows"]) for name in (bias32, factors32, demo32)]
        nodes.append(n("Concat", [features32, taste_mf32, f"{bias32}/rows", f"{factors32}/rows", f"{demo32}/rows"],
                       ["head_x"], axis=1))
        order = _head_order(d, f, g)
        for node in trees:
            node = _copy_node(node)
            node.input[:] = ["head_x" if name == ensemble[0].input[0] else name for name in node.input]
            for attribute in node.attribute:
                if attribute.name == "nodes_featureids":
                    attribute.ints[:] = order[np.asarray(attribute.ints, dtype=np.int64)].tolist()
            nodes.append(node)
        new_inits += _initializers(graph, trees)
        nodes += [n("Cast", ["head_out"], ["head_out64"], to=wide), n("Add", ["base", "head_out64"], ["with_head"])]
        total = "with_head"
    nodes += [n("Squeeze", [total, "axis1"], ["utility64"]),
              n("Cast", ["utility64"], ["utility"], to=TensorProto.FLOAT),
              n("Clip", ["utility", "low32", "high32"], ["score"])]
    for k, node in enumerate(nodes):
        node.name = node.name or f"stage/{k}_{node.op_type}"
    state_dim = layout["demographics"][1]
    graph = helper.make_graph(
        nodes, "pamela_lite_user_score",
        inputs=[helper.make_tensor_value_info("features", wide, ["N", n_features]),
                helper.make_tensor_value_info("user_state", TensorProto.FLOAT, ["M", state_dim])],
        outputs=list(scorer.graph.output), initializer=new_inits)
    if wide == TensorProto.FLOAT:
        from .onnx_scorer import _drop_identity_casts  # (onnx_scorer imports this module)
        _drop_identity_casts(graph)
    return graph


def _branch(name: str, nodes: list, output: str, dtype: int) -> onnx.GraphProto:
    """A subgraph of an If node: `nodes` (reading the outer graph's tensors) producing `output` [N, 3]."""
    return helper.make_graph(nodes, f"stage/{name}", [], [helper.make_tensor_value_info(output, dtype, ["N", 3])])


def _copy_node(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def _linear_weights(scorer: onnx.ModelProto) -> dict:
    """The base (linear) part of the score: ``mean + bias + pop·p + taste·(w·z) + factors·(u·q)``.

    Read off the scorer's ``base_weights`` (the weights of [population, bias, taste, mf]) and
    ``mean``; the retrieval mode ranks a whole catalogue by this before running the trees.
    """
    inits = {t.name: numpy_helper.to_array(t) for t in scorer.graph.initializer}
    weights = inits["base_weights"].ravel()[:4].astype(float)
    return {"mean": float(inits["mean"]), "population": weights[0], "bias": weights[1], "taste": weights[2],
            "factors": weights[3]}


def write_stages(stages: tuple[onnx.ModelProto, onnx.ModelProto], scorer_path: str | Path) -> tuple[Path, Path]:
    """Write both stage graphs (from :func:`build_stages`) beside `scorer_path`, each atomically."""
    image_model, user_model = stages
    paths = stage_paths(scorer_path)
    for model, path in zip((image_model, user_model), paths):
        with atomic_file(path, ".onnx") as tmp:
            Path(tmp).write_bytes(model.SerializeToString())
    return paths
