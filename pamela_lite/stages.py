"""Two-stage scoring graphs, cut out of the one-file scorer (written by ``pamela_lite.onnx_scorer.export``).

Everything the one-file scorer computes from an embedding alone — normalisation, population
head, taste coordinates, prototype assignment, image factors — does not depend on the user, so a
catalogue's image features can be computed once and cached (:mod:`pamela_lite.cached`). This
module splits the exported graph in two, node for node:

* the **image-feature graph** ``<stem>.image_features.onnx``: ``embedding`` float32 [N, D] →
  ``features`` [N, 1 + d + f] = ``[population p(x), taste coordinates z(x), image factors q(x)]``
  (float64 for an exact scorer, float32 for a fast one);
* the **user-scoring graph** ``<stem>.user_score.onnx``: ``features`` [N, F] and ``user_state``
  float32 [M, S], M = N (pairs) or 1 (one user against N images) → ``score`` [N] and
  ``utility`` [N], exactly as the one-file graph.

Both are built from the one-file ONNX model, not from the fitted Python object, so they carry
the same operations (and hence the same rounding) as the scorer they were cut from; they carry
its metadata too, and with it the digest of the fit (``pamela_lite.fit_sha256``) and the
precision, which tie them (and every cache made with them) to that scorer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ._atomic import atomic_file
from .cached import IMAGE_STAGE, USER_STAGE, stage_paths

# Tensor names of the one-file graph (pamela_lite.onnx_scorer.build_graph) that the cut relies on;
# the initializers read are W_image, split_image, item_factors, base_weights and mean.
IMAGE_TENSORS = ("population", "pca", "image_factors")  # [N, 1], [N, d], [N, f]
OUTPUTS = ("score", "utility")


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


def _dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


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
    """The image-feature graph and the user-scoring graph cut from a one-file scorer (left unchanged).

    Both keep the scorer's metadata (fit digest, precision, state layout, ...) and add their stage,
    the feature layout and dtype, and the linear part's weights.
    """
    scorer = _copy(scorer)
    if not any(prop.key == "pamela_lite.fit_sha256" for prop in scorer.metadata_props):
        raise ValueError("the scorer graph records no fit digest (pamela_lite.fit_sha256): export it again")
    graph = scorer.graph
    embedding, user_state = graph.input[0], graph.input[1]
    producer = _producers(graph)
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

    # Stage 2: features + user state → score, utility. The scorer's nodes downstream of the image
    # tensors, fed by a Split of the cached features; user-only tensors that the head's Concat
    # reads are broadcast to N rows, so one state [1, S] can score a whole catalogue.
    user_nodes = _needed_nodes(graph, OUTPUTS, {user_state.name, *IMAGE_TENSORS})
    image_side = set(IMAGE_TENSORS)
    for node in user_nodes:  # tensors that depend on the image (the rest depend on the user only)
        if image_side.intersection(node.input):
            image_side.update(node.output)
    split = helper.make_node("Split", ["features", "stage/feature_split"], list(IMAGE_TENSORS), axis=1,
                             name="stage/split")
    extra = [split, helper.make_node("Shape", [IMAGE_TENSORS[0]], ["stage/rows"], name="stage/rows")]  # [N, 1]
    for node in user_nodes:
        if node.op_type != "Concat":
            continue
        for k, name in enumerate(node.input):
            if name not in image_side and name in producer:
                extra.append(helper.make_node("Expand", [name, "stage/rows"], [f"{name}/rows"], name=f"stage/{name}"))
                node.input[k] = f"{name}/rows"
    user_nodes = extra[:2] + _after_producers(user_nodes, extra[2:])
    inits = _initializers(graph, user_nodes)
    inits.append(numpy_helper.from_array(np.array(widths, dtype=np.int64), "stage/feature_split"))
    user_graph = helper.make_graph(
        user_nodes, "pamela_lite_user_score",
        inputs=[helper.make_tensor_value_info("features", wide, ["N", n_features]),
                helper.make_tensor_value_info(user_state.name, TensorProto.FLOAT, ["M", _dims(user_state)[1]])],
        outputs=list(graph.output), initializer=inits)
    return image_model, _finish(user_graph, scorer, USER_STAGE, meta)


def _after_producers(nodes: list, inserted: list) -> list:
    """`nodes` with each inserted node placed right after the node producing its first input."""
    after: dict[str, list] = {}
    for node in inserted:
        after.setdefault(node.input[0], []).append(node)
    out = []
    for node in nodes:
        out.append(node)
        for name in node.output:
            out.extend(after.get(name, []))
    return out


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
