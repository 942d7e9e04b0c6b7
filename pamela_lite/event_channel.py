"""The implicit-feedback channel: events as confidence-weighted least squares on the taste coordinates (numpy only).

implicit's feedback model (Hu, Koren & Volinsky; the ``implicit`` library's ALS): each observed
(person, item) pair has a **preference** ``p`` (1 if the person acted for it, 0 otherwise) and a
**confidence** ``c = 1 + alpha*|m|`` grown from the evidence ``m``; the person's vector solves
``min sum c (p - x.y_i)^2 + prior``. Three departures, each for a reason:

* **Only shown images are observations.** implicit treats every item the person did not act on
  as preference 0 at confidence 1; here an image never shown is no evidence at all (it could not
  have been chosen). ``view`` rows (m = 0) are the shown-and-not-acted zeros.
* **The item side is the taste coordinates z(x)**, the embedding-tied map the scorer already has,
  so events on any image — including images nobody rated — inform the same user state, and an
  unseen image is scored as before. The events' normal equations are added to the ratings' for
  the linear taste ``w`` ("solved jointly"), so the state layout, the ONNX graph and the device
  scoring do not change.
* **An intercept is profiled out, per session or per person** (``within``, chosen on
  validation). Centred within each session (confidence-weighted), what a person chose is
  compared with what they were shown beside it: exposure, the session's mood and the person's
  propensity to act at all cancel. For a session this equals the least-squares *pairwise*
  (BPR-like) loss over all pairs in it:
  ``sum_{i<j} c_i c_j ((p_i - p_j) - w.(z_i - z_j))^2 = C * sum_i c_i (p~_i - w.z~_i)^2`` with
  ``C = sum c`` — a within-batch choice model in closed form, with an exact fold-in. Centred per
  person instead, the same identity holds over all pairs of the person's shown images: sessions
  are compared with each other too, which uses what a comparison within a session cannot see
  (a batch in which two images were saved against one in which nothing was; actions that do
  not compete with each other, like saves), while only the person's propensity to act cancels,
  not a session's exposure or mood.
* **Rejections can be negative preferences** (``signed``, chosen on validation). In implicit's
  model a skip is a confident 0, the same preference as a plain view; then a session in which
  nothing was kept compares nothing, and a feed whose commonest action is the skip (kept images
  are rare) teaches almost nothing. With ``signed`` a rejection is preference -1, so a skipped
  image is compared with the ones merely viewed beside it.

Units: a preference step (0 -> 1) is worth ``gain`` rating units of utility, and the population
head's share of the difference is removed (it is scored separately), so the target of an event
is ``t = gain * p~ - pop~``; its squared error weighs ``strength * c`` ratings'. Both numbers, the
confidence scale ``alpha`` and each event's weight are chosen on validation ratings when the fit
has them (:mod:`pamela_lite.event_fit`); a stream that does not help gets ``strength`` 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .features import ImageFeatures
from .user_solver import user_normal_equations


WITHIN = ("session", "person")  # where the intercept is profiled out (EventChannel.within)


@dataclass
class EventRows:
    """Aggregated events of users being folded in: one row per (person, shown image, session)."""

    user_index: np.ndarray  # (n,) row of the person among those folded in
    group_index: np.ndarray  # (n,) session code, distinct across people
    evidence: np.ndarray  # (n,) signed evidence m: summed weights of the image's events in the session
    embeddings: np.ndarray  # (n, D) the images' embeddings
    features: ImageFeatures | None = None  # their features, when already computed (calibration reuses them)


@dataclass
class EventChannel:
    """The fitted event parameters a fold-in needs (stored in model.json's ``events``)."""

    weights: dict[str, float] = field(default_factory=dict)  # event name -> signed evidence
    alpha: float = 1.0  # confidence 1 + alpha*|m|
    strength: float = 0.0  # weight of one event's squared error relative to one rating's (0: events ignored)
    gain: float = 1.0  # rating units of utility per unit of preference
    report: dict = field(default_factory=dict)  # how the numbers were chosen (validation figures)
    signed: bool = False  # a rejection is preference -1 (True) or 0 like a view (False, implicit's model)
    within: str = "session"  # the intercept profiled out: per "session" or per "person" (sessions compared too)

    def __post_init__(self):
        if self.within not in WITHIN:
            raise ValueError(f"events.within is {self.within!r}; expected one of {', '.join(WITHIN)}")

    def evidence_of(self, events) -> np.ndarray:
        """Signed weights of event names (unknown names: ValueError) or of numbers, as given
        (NaN or infinite: ValueError, as the events file's validation refuses them)."""
        values = np.asarray(events)
        if values.dtype.kind in "iuf":
            values = values.astype(np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"event weights must be finite numbers; {int((~np.isfinite(values)).sum())} are not")
            return values
        unknown = sorted({str(e) for e in values.tolist()} - set(self.weights))
        if unknown:
            raise ValueError(f"unknown event name(s) {unknown[:5]}; this scorer knows {sorted(self.weights)}")
        return np.array([self.weights[str(e)] for e in values.tolist()], dtype=np.float64)

    def normal_equations(self, feats: ImageFeatures, rows: EventRows, n_users: int,
                         use_population: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The events' terms of each user's taste equations ``A w = b``.

        Parameters
        ----------
        feats : ImageFeatures
            Features of ``rows.embeddings``, row by row.
        rows : EventRows
            The aggregated events.
        n_users : int
            How many users are being folded in.
        use_population : bool
            Remove the population head's share from the targets (as the ratings' residuals do).

        Returns
        -------
        (A (n_users, d, d), b (n_users, d), informed (n_users,) bool): the terms to add, and
        which users have any (centred per session, a user whose sessions each show one image
        learns nothing).
        """
        d = feats.pca.shape[1]
        A, b = np.zeros((n_users, d, d)), np.zeros((n_users, d))
        if not len(rows.evidence) or self.strength <= 0:
            return A, b, np.zeros(n_users, dtype=bool)
        m = np.asarray(rows.evidence, dtype=np.float64)
        pref = np.sign(m) if self.signed else (m > 0).astype(np.float64)
        conf = 1.0 + self.alpha * np.abs(m)
        pop = feats.population if use_population else np.zeros(len(m))
        _, group = np.unique(rows.group_index if self.within == "session" else rows.user_index, return_inverse=True)
        total = np.bincount(group, conf)

        by_group = np.argsort(group, kind="stable")
        starts = np.searchsorted(group[by_group], np.arange(len(total)))

        def centred(values):  # minus the confidence-weighted mean of the value's group (session or person)
            sums = np.add.reduceat((conf[:, None] * values.reshape(len(m), -1))[by_group], starts, axis=0)
            return values - (sums / total[:, None])[group].reshape(values.shape)

        z = centred(feats.pca)
        target = self.gain * centred(pref) - centred(pop)
        weighted = self.strength * conf
        A, b = user_normal_equations(z, np.asarray(rows.user_index, dtype=np.int64), n_users, target, weighted)
        informed = np.abs(A).reshape(n_users, -1).max(axis=1) > 1e-12
        return A, b, informed

    # ------------------------------------------------------------------ model.json

    def to_json(self) -> dict:
        # `signed` and `within` are written only when not the default: such a channel keeps the
        # JSON (and so the fit digest) of files written before the options existed, which still load.
        return {"weights": {k: float(v) for k, v in self.weights.items()}, "alpha": float(self.alpha),
                "strength": float(self.strength), "gain": float(self.gain),
                **({"signed": True} if self.signed else {}),
                **({"within": self.within} if self.within != "session" else {}), "report": self.report}

    @classmethod
    def from_json(cls, meta: dict) -> "EventChannel":
        return cls({str(k): float(v) for k, v in meta["weights"].items()}, float(meta["alpha"]),
                   float(meta["strength"]), float(meta["gain"]), dict(meta.get("report", {})),
                   bool(meta.get("signed", False)),  # models written before the options: unsigned,
                   str(meta.get("within", "session")))  # centred per session


def aggregate(groups: np.ndarray, codes: np.ndarray, weights: np.ndarray,
              embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Device-side aggregation of raw event rows, as :func:`pamela_lite.events.evidence` does in polars.

    Identical rows (same session, event and image) count once; the weights of one image's
    events in one session add up. Images are told apart by their embeddings.

    Parameters
    ----------
    groups, codes, weights : numpy.ndarray
        Per row: session code, event code (-1 for a numeric weight), signed weight.
    embeddings : numpy.ndarray
        (n, D) the rows' image embeddings.

    Returns
    -------
    (groups, evidence, embeddings) of the aggregated rows, in order of first appearance.
    """
    emb = np.asarray(embeddings, dtype=np.float64).reshape(len(weights), -1)
    key = np.column_stack([groups, codes, weights, emb])
    _, first = np.unique(key, axis=0, return_index=True)
    first = np.sort(first)
    per_image = np.column_stack([groups[first], emb[first]])
    _, start, inverse = np.unique(per_image, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(start)  # unique rows in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    evidence = np.bincount(rank[inverse], weights[first], minlength=len(order))
    return per_image[start[order], 0], evidence, per_image[start[order], 1:]
