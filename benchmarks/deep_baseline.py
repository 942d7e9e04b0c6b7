"""A small deep personalized reward model, the kind pamela_lite is held against.

In the style of deep personalized aesthetics / reward models: an MLP tower over the image
embedding, a learned embedding per user, and an interaction head; trained end to end with MSE
on the same training split, early-stopped on val_seen. A user unseen in training gets a new
embedding, started at the mean of the training users' and fitted to their k context ratings
with the network frozen (k = 0: the mean user).

torch is an optional benchmark extra (CPU build), never a dependency of pamela_lite.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import polars as pl
import torch
from torch import nn


class DeepTaste(nn.Module):
    def __init__(self, dim: int, n_users: int, hidden: int = 256, user_dim: int = 32, dropout: float = 0.1):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                   nn.Linear(hidden, hidden // 2), nn.GELU())
        self.users = nn.Embedding(n_users, user_dim)
        nn.init.normal_(self.users.weight, 0, 0.05)
        self.user_proj = nn.Linear(user_dim, hidden // 2)
        self.head = nn.Sequential(nn.Linear(hidden // 2 * 2 + user_dim, hidden // 2), nn.GELU(),
                                  nn.Linear(hidden // 2, 1))

    def score(self, x: torch.Tensor, user_vec: torch.Tensor) -> torch.Tensor:
        h = self.image(x)
        inter = h * self.user_proj(user_vec)
        return self.head(torch.cat([h, inter, user_vec], dim=1)).squeeze(1)

    def forward(self, x: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.score(x, self.users(user))


class DeepBaseline:
    """fit / fold_in / predict with the same inputs as PersonalScorer."""

    def __init__(self, epochs: int = 40, batch_size: int = 512, lr: float = 1e-3, weight_decay: float = 1e-4,
                 patience: int = 4, seed: int = 0, threads: int = 2):
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.seed, self.threads = patience, seed, threads

    def _x(self, embeddings, image_ids) -> torch.Tensor:
        x = embeddings.take(image_ids).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return torch.from_numpy(x)

    def fit(self, train: pl.DataFrame, embeddings, validation: pl.DataFrame | None = None) -> "DeepBaseline":
        torch.manual_seed(self.seed)
        torch.set_num_threads(self.threads)
        self.users_ = train["participant_id"].unique(maintain_order=True).to_list()
        self._row = {u: k for k, u in enumerate(self.users_)}
        self.mean_ = float(train["rating"].mean())
        x = self._x(embeddings, train["image_id"])
        u = torch.tensor([self._row[p] for p in train["participant_id"].to_list()])
        y = torch.tensor(train["rating"].to_numpy(), dtype=torch.float32) - self.mean_
        self.net_ = DeepTaste(x.shape[1], len(self.users_))
        opt = torch.optim.AdamW(self.net_.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        val = None
        if validation is not None:
            known = validation.filter(pl.col("participant_id").is_in(self.users_))
            val = (self._x(embeddings, known["image_id"]),
                   torch.tensor([self._row[p] for p in known["participant_id"].to_list()]),
                   torch.tensor(known["rating"].to_numpy(), dtype=torch.float32) - self.mean_)
        best, best_state, stale = float("inf"), None, 0
        gen = torch.Generator().manual_seed(self.seed)
        start = time.perf_counter()
        self.history_ = []
        for epoch in range(self.epochs):
            self.net_.train()
            order = torch.randperm(len(y), generator=gen)
            for at in range(0, len(y), self.batch_size):
                idx = order[at:at + self.batch_size]
                loss = nn.functional.mse_loss(self.net_(x[idx], u[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if val is not None:
                self.net_.eval()
                with torch.no_grad():
                    rmse = float(torch.sqrt(nn.functional.mse_loss(self.net_(val[0], val[1]), val[2])))
                self.history_.append(rmse)
                if rmse < best - 1e-4:
                    best, best_state, stale = rmse, copy.deepcopy(self.net_.state_dict()), 0
                else:
                    stale += 1
                    if stale >= self.patience:
                        break
        if best_state is not None:
            self.net_.load_state_dict(best_state)
        self.net_.eval()
        self.fit_seconds_ = time.perf_counter() - start
        self.epochs_run_ = epoch + 1
        return self

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
            y = torch.tensor(part["rating"].to_numpy(), dtype=torch.float32) - self.mean_
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
        vecs = []
        for p in pairs["participant_id"].to_list():
            vecs.append(states[p] if states is not None and p in states else table[self._row[p]])
        with torch.no_grad():
            out = self.net_.score(self._x(embeddings, pairs["image_id"]), torch.stack(vecs)).numpy()
        return out + self.mean_

    def size_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.net_.state_dict().values())
