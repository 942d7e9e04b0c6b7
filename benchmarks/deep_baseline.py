"""Deep personalized baselines, the kind pamela_lite is held against (torch, CPU).

Two models, each with a small seeded validation search, same inputs and protocol as
``PersonalScorer`` (``fit(train, embeddings, scale, validation=...)``, ``fold_in(context,
embeddings, users=...)``, ``predict(pairs, embeddings, states)``):

``FewShotDeep`` — the in-context model (the shape PAMELA describes)
    An image tower ``h(x)`` (MLP over the L2-normalised embedding) with a population output
    ``p(x)``. A person is described by a *set* of rated examples: each context pair (h(x_j),
    standardised rating, the rating less the person's context mean, the residual after p) is
    encoded by a small MLP and the codes are mean-pooled, beside the pooled moment
    ``mean_j h(x_j) * residual_j`` and the set size; a user head turns the pooled vector into a
    bias, a taste vector ``w`` over the image features and a gate on a cross-attention read-out
    (the query image attends to the context images, learned k-NN). Score = p(x) + b + w·h(x) +
    gate · attention. Trained episodically on the training users only: each step draws users,
    a context size k (0, or log-uniform from 1 to all but the query) and k of the user's train
    ratings as context, and predicts 32 of their other train ratings (MSE). A new person is
    scored from their k context ratings by one forward pass — no per-user gradient steps; a
    seen person's context is all their training ratings.

``DeepBaseline`` — MLP + learned user embedding (the previous baseline, now searched)
    Image MLP, one embedding per training user and an interaction head, trained with MSE;
    a new person's embedding is fitted to their k ratings with the network frozen (gradient
    steps, k = 0: the mean embedding).

Search (both): a seeded sample of configurations (width, depth, user/context-embedding size,
weight decay) from a small grid, each trained with early stopping (epochs chosen on val), under
a wall-clock budget; the configuration with the best **validation** criterion is kept (mean
per-user SROCC on the validation rows of users seen in training; for the few-shot model the
mean of that figure with the full training context and with a seeded 10-rating context). Test
splits are never seen by the search. ``config=`` skips the search (one configuration, still
early-stopped on validation).

torch is an optional benchmark extra (CPU build), never a dependency of pamela_lite.
"""

from __future__ import annotations

import copy
import itertools
import math
import time

import numpy as np
import polars as pl
import torch
from torch import nn

from pamela_lite.metrics import evaluate_scores

# whiten: the input is the L2-normalised embedding, or that PCA-whitened over all components
# (taste along low-variance directions is invisible to a network on the raw embedding).
FEWSHOT_GRID = {"whiten": (False, True), "width": (128, 256), "depth": (1, 2), "ctx_dim": (32, 64),
                "weight_decay": (1e-4, 1e-2)}
EMBEDDING_GRID = {"whiten": (False, True), "width": (128, 256), "depth": (1, 2), "user_dim": (16, 32),
                  "weight_decay": (1e-4, 1e-2)}


def _configs(grid: dict, n: int, seed: int) -> list[dict]:
    """A seeded sample of n configurations of the grid, alternating over the first key's values
    (so both inputs, raw and whitened, are tried whenever n >= 2)."""
    first, rest = next(iter(grid)), dict(list(grid.items())[1:])
    allc = [dict(zip(rest, values)) for values in itertools.product(*rest.values())]
    rng = np.random.default_rng([seed, 31])
    per = [[{first: v, **allc[i]} for i in rng.permutation(len(allc))] for v in grid[first]]
    return [per[i % len(per)][i // len(per)] for i in range(min(n, len(per) * len(allc)))]


def _unit(embeddings, rows: np.ndarray | None = None, whiten: bool = False) -> torch.Tensor:
    """L2-normalised embeddings; whiten=True: then PCA-whitened (all components, eigenvalue floor),
    with mean and covariance from the training images `rows` only."""
    x = np.asarray(embeddings.matrix, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if whiten:
        fit = x[np.unique(rows)] if rows is not None else x
        mean = fit.mean(0)
        vals, vecs = np.linalg.eigh(np.cov(fit - mean, rowvar=False))
        vals = np.maximum(vals, vals.max() * 1e-4)
        x = (x - mean) @ (vecs / np.sqrt(vals)) / np.sqrt(x.shape[1])
    return torch.from_numpy(x.astype(np.float32))


def _val_srocc(pairs: pl.DataFrame, score: np.ndarray) -> float:
    return float(evaluate_scores(pairs.with_columns(score=pl.Series(score, dtype=pl.Float64)))["srocc"])


def _tower(dim: int, width: int, depth: int, dropout: float) -> nn.Sequential:
    layers, d = [], dim
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.GELU(), nn.Dropout(dropout)]
        d = width
    return nn.Sequential(*layers)


class _SearchMixin:
    """fit() = seeded search over configurations, each early-stopped on validation."""

    grid: dict = {}

    def fit(self, train: pl.DataFrame, embeddings, scale=None, validation: pl.DataFrame | None = None):
        if validation is None:
            raise ValueError("the deep baselines choose epochs and configuration on validation (val_seen)")
        torch.set_num_threads(self.threads)
        configs = [self.config] if self.config is not None else _configs(self.grid, self.n_configs, self.seed)
        start = time.perf_counter()
        self.search_ = []
        best = None
        for i, config in enumerate(configs):
            if i and time.perf_counter() - start > self.budget_s:
                break
            t = time.perf_counter()
            trial = self._fit_one(train, embeddings, validation, config)
            self.search_.append({**config, "val": trial.val_best_, "epochs": trial.epochs_best_,
                                 "seconds": time.perf_counter() - t})
            if best is None or trial.val_best_ > best.val_best_:
                best = trial
        self.__dict__.update({k: v for k, v in best.__dict__.items() if k != "search_"})
        self.chosen_ = best.config_
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.net_.state_dict().values())


class _FewShotNet(nn.Module):
    def __init__(self, dim: int, width: int, depth: int, ctx_dim: int, dropout: float):
        super().__init__()
        self.width = width
        self.tower = _tower(dim, width, depth, dropout)
        self.pop = nn.Linear(width, 1)
        self.enc = nn.Sequential(nn.Linear(width + 3, ctx_dim), nn.GELU(), nn.Linear(ctx_dim, ctx_dim))
        self.moment = nn.Linear(width, ctx_dim)
        self.user = nn.Sequential(nn.Linear(ctx_dim + 2, ctx_dim), nn.GELU(), nn.Linear(ctx_dim, width + 2))
        nn.init.zeros_(self.user[-1].weight)
        nn.init.zeros_(self.user[-1].bias)
        self.key = nn.Linear(width, ctx_dim, bias=False)
        self.query = nn.Linear(width, ctx_dim, bias=False)
        self.kq = nn.Linear(width, ctx_dim, bias=False)  # the kernel path: (hq Kq) . (moment Kc)
        self.kc = nn.Linear(width, ctx_dim, bias=False)

    def users(self, hc: torch.Tensor, yc: torch.Tensor, mask: torch.Tensor):
        """Per user (B, K contexts, padded by mask): bias, taste w, gate, and what attention needs."""
        k = mask.sum(1, keepdim=True)
        kk = k.clamp(min=1)
        pc = self.pop(hc).squeeze(-1)
        resid = (yc - pc) * mask
        centred = (yc - (yc * mask).sum(1, keepdim=True) / kk) * mask
        codes = self.enc(torch.cat([hc, yc.unsqueeze(-1), centred.unsqueeze(-1), resid.unsqueeze(-1)], -1))
        pooled = (codes * mask.unsqueeze(-1)).sum(1) / kk
        moment = (hc * resid.unsqueeze(-1)).sum(1) / (kk + 1.0)
        pooled = pooled + self.moment(moment)
        count = torch.cat([torch.log1p(k) / math.log(301.0), (k == 0).float()], 1)
        out = self.user(torch.cat([pooled, count], 1))
        w, b, gate = out[:, :self.width], out[:, self.width], out[:, self.width + 1]
        return w, b, gate, self.key(hc), resid, self.kc(moment)

    def score(self, hq: torch.Tensor, user) -> torch.Tensor:
        """hq (B, Q, width) against users (B, ...) -> (B, Q)."""
        w, b, gate, keys, resid, kernel, mask = user
        base = (self.pop(hq).squeeze(-1) + b.unsqueeze(1) + (hq * w.unsqueeze(1)).sum(-1) / math.sqrt(self.width)
                + (self.kq(hq) * kernel.unsqueeze(1)).sum(-1))
        if keys.shape[1] == 0:
            return base
        logits = torch.einsum("bqd,bkd->bqk", self.query(hq), keys) / math.sqrt(keys.shape[-1])
        logits = logits.masked_fill(mask.unsqueeze(1) == 0, -1e9)
        attn = torch.softmax(logits, -1) * (mask.sum(1) > 0).float()[:, None, None]
        return base + gate.unsqueeze(1) * torch.einsum("bqk,bk->bq", attn, resid)


class _EarlyStop:
    """Keeps the network state of the best validation score; says when `patience` checks brought nothing."""

    def __init__(self, patience: int):
        self.patience, self.best, self.state, self.stale, self.at = patience, -np.inf, None, 0, 0

    def update(self, score: float, net: nn.Module, at: int) -> bool:
        """Record one validation check; True when training should stop."""
        if score > self.best + 1e-4:
            self.best, self.state, self.stale, self.at = score, copy.deepcopy(net.state_dict()), 0, at
            return False
        self.stale += 1
        return self.stale >= self.patience

    def restore(self, trial, net: nn.Module):
        """Put the best state back into `net` and onto `trial` (net_, val_best_, epochs_best_)."""
        net.load_state_dict(self.state)
        trial.net_, trial.val_best_, trial.epochs_best_ = net.eval(), float(self.best), self.at
        return trial


class FewShotDeep(_SearchMixin):
    """Set / in-context deep model: scores a person from their rated examples, no per-user steps."""

    grid = FEWSHOT_GRID

    def __init__(self, config: dict | None = None, n_configs: int = 2, budget_s: float = 900.0,
                 max_steps: int = 1200, eval_every: int = 150, patience: int = 3, users_per_step: int = 16,
                 query: int = 32, lr: float = 3e-3, dropout: float = 0.1, seed: int = 0, threads: int = 1):
        self.config, self.n_configs, self.budget_s = config, n_configs, budget_s
        self.max_steps, self.eval_every, self.patience = max_steps, eval_every, patience
        self.users_per_step, self.query, self.lr, self.dropout = users_per_step, query, lr, dropout
        self.seed, self.threads = seed, threads

    # -- data -------------------------------------------------------------------------------
    def _index(self, train: pl.DataFrame, embeddings, whiten: bool) -> None:
        rows = embeddings.rows(train["image_id"])
        self.x_ = _unit(embeddings, rows, whiten)
        self.mean_, self.sd_ = float(train["rating"].mean()), float(train["rating"].std())
        y = (train["rating"].to_numpy().astype(np.float32) - self.mean_) / self.sd_
        users = train["participant_id"].to_list()
        self.users_ = list(dict.fromkeys(users))
        pos = {u: i for i, u in enumerate(self.users_)}
        codes = np.array([pos[u] for u in users])
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(self.users_) + 1))
        self.context_ = {u: (rows[order[bounds[i]:bounds[i + 1]]], y[order[bounds[i]:bounds[i + 1]]])
                         for i, u in enumerate(self.users_)}

    def _pad(self, contexts: list[tuple[np.ndarray, np.ndarray]]):
        kmax = max((len(r) for r, _ in contexts), default=0)
        rows = np.zeros((len(contexts), kmax), dtype=np.int64)
        ys = np.zeros((len(contexts), kmax), dtype=np.float32)
        mask = np.zeros((len(contexts), kmax), dtype=np.float32)
        for i, (r, y) in enumerate(contexts):
            rows[i, :len(r)], ys[i, :len(r)], mask[i, :len(r)] = r, y, 1
        return torch.from_numpy(rows), torch.from_numpy(ys), torch.from_numpy(mask)

    def _users(self, net, contexts):
        rows, ys, mask = self._pad(contexts)
        hc = net.tower(self.x_[rows.reshape(-1)]).reshape(rows.shape[0], rows.shape[1], net.width)
        return (*net.users(hc, ys, mask), mask)

    def _episode(self, rng) -> tuple:
        users = rng.choice(len(self.users_), self.users_per_step, replace=False)
        contexts, queries, targets = [], [], []
        for u in users:
            r, y = self.context_[self.users_[u]]
            q = min(self.query, len(r) // 2)
            perm = rng.permutation(len(r))
            room = len(r) - q
            k = 0 if rng.random() < 0.1 else int(round(math.exp(rng.uniform(0, math.log(room)))))
            contexts.append((r[perm[:k]], y[perm[:k]]))
            queries.append(r[perm[room:room + q]])
            targets.append(y[perm[room:room + q]])
        q = min(len(t) for t in targets)
        return contexts, np.stack([a[:q] for a in queries]), np.stack([t[:q] for t in targets])

    # -- training ---------------------------------------------------------------------------
    def _fit_one(self, train, embeddings, validation, config) -> "FewShotDeep":
        trial = copy.copy(self)
        trial.config_ = dict(config)
        trial._index(train, embeddings, config.get("whiten", False))
        torch.manual_seed(self.seed)
        rng = np.random.default_rng([self.seed, 17])
        net = _FewShotNet(trial.x_.shape[1], config["width"], config["depth"], config["ctx_dim"], self.dropout)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=config["weight_decay"])
        val = validation.filter(pl.col("participant_id").is_in(trial.users_))
        picks = {u: np.random.default_rng([self.seed, 10, i]).permutation(len(r))[:10]
                 for i, (u, (r, _)) in enumerate(trial.context_.items())}
        ctx10 = {u: (r[picks[u]], y[picks[u]]) for u, (r, y) in trial.context_.items()}
        stop, step = _EarlyStop(self.patience), 0
        trial.history_ = []
        while step < self.max_steps:
            net.train()
            for _ in range(self.eval_every):
                contexts, qrows, target = trial._episode(rng)
                user = trial._users(net, contexts)
                hq = net.tower(trial.x_[torch.from_numpy(qrows.reshape(-1))]).reshape(*qrows.shape, -1)
                loss = nn.functional.mse_loss(net.score(hq, user), torch.from_numpy(target))
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
            trial.net_ = net.eval()
            full = _val_srocc(val, trial.predict(val, embeddings))
            few = _val_srocc(val, trial.predict(val, embeddings, ctx10))
            score = (full + few) / 2
            trial.history_.append({"step": step, "val_full": full, "val_k10": few})
            if stop.update(score, net, step):
                break
        return stop.restore(trial, net)

    # -- the protocol -----------------------------------------------------------------------
    def fold_in(self, context: pl.DataFrame, embeddings, users: pl.DataFrame | None = None) -> dict:
        """Each new person's state is their context (image rows, standardised ratings): no training."""
        states = {}
        if context.height:
            rows = embeddings.rows(context["image_id"])
            y = (context["rating"].to_numpy().astype(np.float32) - self.mean_) / self.sd_
            ids = context["participant_id"].to_list()
            for u in dict.fromkeys(ids):
                pick = np.array([i for i, p in enumerate(ids) if p == u])
                states[u] = (rows[pick], y[pick])
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        for u in (users["participant_id"].to_list() if users is not None else []):
            states.setdefault(u, empty)
        return states

    def predict(self, pairs: pl.DataFrame, embeddings, states: dict | None = None) -> np.ndarray:
        out = np.zeros(pairs.height, dtype=np.float64)
        if pairs.height == 0:
            return out
        qrows = embeddings.rows(pairs["image_id"])
        ids = pairs["participant_id"].to_list()
        empty = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
        groups: dict = {}
        for i, u in enumerate(ids):
            groups.setdefault(u, []).append(i)
        names = list(groups)
        with torch.no_grad():
            for at in range(0, len(names), 64):
                chunk = names[at:at + 64]
                contexts = [states[u] if states is not None and u in states else self.context_.get(u, empty)
                            for u in chunk]
                user = self._users(self.net_, contexts)
                for j, u in enumerate(chunk):
                    idx = np.array(groups[u])
                    hq = self.net_.tower(self.x_[torch.from_numpy(qrows[idx])]).unsqueeze(0)
                    one = tuple(t[j:j + 1] for t in user)
                    out[idx] = self.net_.score(hq, one)[0].numpy()
        return out * self.sd_ + self.mean_


class _EmbeddingNet(nn.Module):
    def __init__(self, dim: int, n_users: int, width: int, depth: int, user_dim: int, dropout: float):
        super().__init__()
        self.image = _tower(dim, width, depth, dropout)
        self.users = nn.Embedding(n_users, user_dim)
        nn.init.normal_(self.users.weight, 0, 0.05)
        self.user_proj = nn.Linear(user_dim, width)
        self.head = nn.Sequential(nn.Linear(2 * width + user_dim, width // 2), nn.GELU(), nn.Linear(width // 2, 1))

    def score(self, x: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        h = self.image(x)
        return self.head(torch.cat([h, h * self.user_proj(user_vec), user_vec], dim=1)).squeeze(1)

    def forward(self, x: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.score(x, self.users(user))


class DeepBaseline(_SearchMixin):
    """MLP + learned user embedding; new users by gradient steps on their embedding."""

    grid = EMBEDDING_GRID

    def __init__(self, config: dict | None = None, n_configs: int = 2, budget_s: float = 300.0, epochs: int = 40,
                 batch_size: int = 512, lr: float = 1e-3, patience: int = 3, dropout: float = 0.1, seed: int = 0,
                 threads: int = 1):
        self.config, self.n_configs, self.budget_s = config, n_configs, budget_s
        self.epochs, self.batch_size, self.lr, self.patience = epochs, batch_size, lr, patience
        self.dropout, self.seed, self.threads = dropout, seed, threads

    def _x(self, embeddings, image_ids) -> torch.Tensor:
        return self.x_[torch.from_numpy(np.array(embeddings.rows(image_ids)))]

    def _fit_one(self, train, embeddings, validation, config) -> "DeepBaseline":
        trial = copy.copy(self)
        trial.config_ = dict(config)
        torch.manual_seed(self.seed)
        trial.x_ = _unit(embeddings, embeddings.rows(train["image_id"]), config.get("whiten", False))
        trial.users_ = train["participant_id"].unique(maintain_order=True).to_list()
        trial._row = {u: k for k, u in enumerate(trial.users_)}
        trial.mean_, trial.sd_ = float(train["rating"].mean()), float(train["rating"].std())
        x = trial._x(embeddings, train["image_id"])
        u = torch.tensor([trial._row[p] for p in train["participant_id"].to_list()])
        y = (torch.tensor(train["rating"].to_numpy(), dtype=torch.float32) - trial.mean_) / trial.sd_
        net = _EmbeddingNet(x.shape[1], len(trial.users_), config["width"], config["depth"], config["user_dim"],
                            self.dropout)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=config["weight_decay"])
        val = validation.filter(pl.col("participant_id").is_in(trial.users_))
        stop = _EarlyStop(self.patience)
        gen = torch.Generator().manual_seed(self.seed)
        trial.history_ = []
        for epoch in range(self.epochs):
            trial.epochs_run_ = epoch + 1
            net.train()
            order = torch.randperm(len(y), generator=gen)
            for at in range(0, len(y), self.batch_size):
                idx = order[at:at + self.batch_size]
                loss = nn.functional.mse_loss(net(x[idx], u[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            trial.net_ = net.eval()
            score = _val_srocc(val, trial.predict(val, embeddings))
            trial.history_.append(score)
            if stop.update(score, net, epoch + 1):
                break
        return stop.restore(trial, net)

    def fold_in(self, context: pl.DataFrame, embeddings, users: pl.DataFrame | None = None,
                steps: int = 100, l2: float = 1.0) -> dict:
        """New users' embeddings from their context ratings (network frozen)."""
        mean_vec = self.net_.users.weight.detach().mean(0)
        ids = context["participant_id"].unique(maintain_order=True).to_list()
        if users is not None:
            ids += [p for p in users["participant_id"].unique(maintain_order=True).to_list() if p not in set(ids)]
        vectors = {p: mean_vec.clone() for p in ids}
        for p, part in context.group_by("participant_id", maintain_order=True):
            p = p[0]
            x = self._x(embeddings, part["image_id"])
            y = (torch.tensor(part["rating"].to_numpy(), dtype=torch.float32) - self.mean_) / self.sd_
            vec = mean_vec.clone().requires_grad_(True)
            opt = torch.optim.Adam([vec], lr=0.05)
            for _ in range(steps):
                pred = self.net_.score(x, vec.expand(len(y), -1))
                loss = nn.functional.mse_loss(pred, y) + l2 * ((vec - mean_vec) ** 2).sum() / max(len(y), 1)
                opt.zero_grad()
                loss.backward()
                opt.step()
            vectors[p] = vec.detach()
        return vectors

    def predict(self, pairs: pl.DataFrame, embeddings, states: dict | None = None) -> np.ndarray:
        table = self.net_.users.weight.detach()
        vecs = [states[p] if states is not None and p in states else table[self._row[p]]
                for p in pairs["participant_id"].to_list()]
        if not vecs:
            return np.zeros(0)
        with torch.no_grad():
            out = self.net_.score(self._x(embeddings, pairs["image_id"]), torch.stack(vecs)).numpy()
        return out * self.sd_ + self.mean_
