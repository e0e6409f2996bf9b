"""A small neural surrogate of the utility, fitted on evaluated masks, and its quality.

The published surrogate is Linear(L → 2L) → CELU → Linear(2L → 1) → sigmoid, trained with
MSE by SGD (lr 0.008, momentum 0.9, batch 300, 300 epochs, lr × 0.1 every 100 epochs).
That schedule counts epochs, so with a few hundred masks it makes only a few hundred
optimizer steps. :func:`fit_surrogate` counts steps instead, holds out masks from every
stratum for early stopping, and standardises the target so a linear output head can
exceed the range of a sigmoid.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field
from torch import nn

from compressor.components import StrictConfig

log = logging.getLogger(__name__)


class SurrogateConfig(StrictConfig):
    """Architecture and training schedule of the surrogate."""

    hidden_factor: int = Field(2, ge=1, description="Hidden width as a multiple of the number of layers L.")
    head: Literal["sigmoid", "linear"] = Field(
        "linear", description="Output head: `sigmoid` (published, range 0..1) or `linear` (unbounded)."
    )
    standardize: bool = Field(True, description="Fit the z-scored utility and map predictions back.")
    optimizer: Literal["sgd", "adam"] = Field("adam", description="Optimizer: `sgd` with momentum, or `adam`.")
    lr: float = Field(0.01, gt=0, description="Learning rate.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (ignored by adam).")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay.")
    batch_size: int = Field(64, ge=1, description="Masks per optimizer step.")
    epochs: int | None = Field(
        None, ge=1, description="Train for exactly this many epochs (published schedule); overrides the step settings."
    )
    lr_step_epochs: int | None = Field(
        None, ge=1, description="With `epochs`: multiply the learning rate by 0.1 every this many epochs."
    )
    min_steps: int = Field(1500, ge=1, description="Optimizer steps always made before early stopping may stop.")
    max_steps: int = Field(6000, ge=1, description="Upper bound on optimizer steps.")
    patience: int = Field(500, ge=1, description="Steps without held-out improvement before stopping.")
    holdout: float = Field(0.2, ge=0, lt=1, description="Fraction of each stratum held out for early stopping and quality.")
    refit: bool = Field(
        True, description="After early stopping, train again on all masks for the chosen number of steps."
    )
    ensemble: int = Field(1, ge=1, le=32, description="Number of surrogates with different seeds whose mean is used.")


class SurrogateMLP(nn.Module):
    """Linear(L → hL) → CELU → Linear(hL → 1), with an optional sigmoid head."""

    def __init__(self, num_layers: int, hidden_factor: int = 2, head: str = "sigmoid"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(num_layers, hidden_factor * num_layers), nn.CELU(), nn.Linear(hidden_factor * num_layers, 1)
        )
        self.head = head

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        out = self.body(masks).squeeze(-1)
        return torch.sigmoid(out) if self.head == "sigmoid" else out


@dataclass
class Surrogate:
    """A fitted surrogate: call it on a bool array [n, L] to get predicted utilities."""

    models: list[SurrogateMLP]
    mean: float
    scale: float
    steps: int
    quality: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(self, masks: np.ndarray, chunk: int = 65536) -> np.ndarray:
        masks = np.asarray(masks, dtype=np.float32).reshape(-1, self.num_layers)
        out = np.empty(masks.shape[0], dtype=float)
        for start in range(0, masks.shape[0], chunk):
            x = torch.from_numpy(masks[start:start + chunk])
            pred = torch.stack([m(x) for m in self.models]).mean(0)
            out[start:start + chunk] = pred.double().numpy() * self.scale + self.mean
        return out

    @property
    def num_layers(self) -> int:
        return self.models[0].body[0].in_features


def split_by_stratum(strata: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (train, held-out) index arrays, holding out ``fraction`` of every stratum.

    A stratum with fewer than three masks is kept whole for training.
    """
    rng = np.random.default_rng(seed)
    train, held = [], []
    for value in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == value))
        count = int(round(fraction * len(members))) if len(members) >= 3 else 0
        held.extend(members[:count].tolist())
        train.extend(members[count:].tolist())
    return np.array(sorted(train), dtype=int), np.array(sorted(held), dtype=int)


def _train_one(
    x: torch.Tensor, y: torch.Tensor, config: SurrogateConfig, seed: int,
    x_val: torch.Tensor | None, y_val: torch.Tensor | None, fixed_steps: int | None,
) -> tuple[SurrogateMLP, int]:
    """Train one MLP; return it (at its best held-out step) and the step count used."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SurrogateMLP(x.shape[1], config.hidden_factor, config.head)
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    n = x.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, math.ceil(n / batch))
    if config.epochs is not None:
        total_steps = config.epochs * steps_per_epoch
        step_size = (config.lr_step_epochs or config.epochs) * steps_per_epoch
        early_stop = False
    else:
        total_steps = fixed_steps if fixed_steps is not None else config.max_steps
        step_size = total_steps
        early_stop = fixed_steps is None and x_val is not None and len(x_val) > 0
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, step_size), gamma=0.1)

    best_loss = math.inf
    best_state = copy.deepcopy(model.state_dict())
    best_step = total_steps
    order = torch.randperm(n, generator=generator)
    cursor = 0
    for step in range(1, total_steps + 1):
        if cursor + batch > n:
            order = torch.randperm(n, generator=generator)
            cursor = 0
        index = order[cursor:cursor + batch]
        cursor += batch
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x[index]), y[index])
        loss.backward()
        optimizer.step()
        scheduler.step()

        if early_stop and (step % 25 == 0 or step == total_steps):
            with torch.no_grad():
                val = float(torch.nn.functional.mse_loss(model(x_val), y_val))
            if val < best_loss - 1e-9:
                best_loss, best_step = val, step
                best_state = copy.deepcopy(model.state_dict())
            elif step >= config.min_steps and step - best_step >= config.patience:
                break
    if early_stop:
        model.load_state_dict(best_state)
        return model, best_step
    return model, total_steps


def fit_surrogate(
    masks: np.ndarray, utilities: np.ndarray, config: SurrogateConfig, seed: int = 0,
) -> Surrogate:
    """Fit a surrogate to ``utilities`` of ``masks`` (bool [n, L]) and measure its quality.

    The held-out split (``config.holdout`` of each stratum) picks the step count by early
    stopping and gives the quality figures. With ``refit`` the final models are then
    trained on every mask for that step count. The result depends only on the inputs and
    ``seed``.
    """
    # The MLP is tiny, so extra threads only add synchronisation cost, and one thread
    # keeps the result identical from machine to machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(np.asarray(masks, dtype=bool), np.asarray(utilities, dtype=float), config, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(masks: np.ndarray, utilities: np.ndarray, config: SurrogateConfig, seed: int) -> Surrogate:
    strata = masks.sum(1)
    train_idx, held_idx = split_by_stratum(strata, config.holdout, seed)

    if config.standardize:
        mean = float(utilities[train_idx].mean())
        scale = float(utilities[train_idx].std()) or 1.0
    else:
        mean, scale = 0.0, 1.0
    x_all = torch.from_numpy(masks.astype(np.float32))
    y_all = torch.from_numpy(((utilities - mean) / scale).astype(np.float32))
    x_val = x_all[held_idx] if len(held_idx) else None
    y_val = y_all[held_idx] if len(held_idx) else None

    models, steps = [], []
    for member in range(config.ensemble):
        model, used = _train_one(x_all[train_idx], y_all[train_idx], config, seed + member, x_val, y_val, None)
        models.append(model)
        steps.append(used)
    surrogate = Surrogate(models=models, mean=mean, scale=scale, steps=int(np.mean(steps)))

    if len(held_idx):
        surrogate.quality = quality_report(utilities[held_idx], surrogate(masks[held_idx]), strata[held_idx])
    else:
        surrogate.quality = quality_report(utilities, surrogate(masks), strata)
        surrogate.quality["note"] = "no held-out masks: quality measured on the training masks"
    surrogate.quality["n_train"] = int(len(train_idx))
    surrogate.quality["n_heldout"] = int(len(held_idx))
    surrogate.quality["steps"] = surrogate.steps

    if config.refit and len(held_idx) and config.epochs is None:
        refitted = []
        for member, used in enumerate(steps):
            model, _ = _train_one(x_all, y_all, config, seed + member, None, None, max(used, 1))
            refitted.append(model)
        surrogate.models = refitted
    for model in surrogate.models:
        model.eval()
    return surrogate


def _r2(actual: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((actual - actual.mean()) ** 2).sum())
    if total == 0:
        return float("nan")
    return 1.0 - float(((actual - predicted) ** 2).sum()) / total


def _spearman(actual: np.ndarray, predicted: np.ndarray) -> float:
    if len(actual) < 3:
        return float("nan")
    from scipy.stats import spearmanr

    value = spearmanr(actual, predicted).statistic
    return float(value) if value == value else float("nan")


def _top_k_agreement(actual: np.ndarray, predicted: np.ndarray) -> float:
    """Share of the best fifth of masks (by actual utility) that the surrogate also ranks in its best fifth."""
    k = max(1, len(actual) // 5)
    if len(actual) < 2:
        return float("nan")
    best_actual = set(np.argsort(-actual)[:k].tolist())
    best_predicted = set(np.argsort(-predicted)[:k].tolist())
    return len(best_actual & best_predicted) / k


def quality_report(actual: np.ndarray, predicted: np.ndarray, strata: np.ndarray) -> dict[str, Any]:
    """R², Spearman correlation and top-fifth agreement, overall and per stratum (kept-layer count)."""
    report: dict[str, Any] = {
        "r2": _r2(actual, predicted),
        "spearman": _spearman(actual, predicted),
        "top_k_agreement": _top_k_agreement(actual, predicted),
        "rmse": float(np.sqrt(np.mean((actual - predicted) ** 2))) if len(actual) else float("nan"),
        "per_stratum": {},
    }
    for value in sorted(np.unique(strata).tolist(), reverse=True):
        members = strata == value
        report["per_stratum"][str(value)] = {
            "n": int(members.sum()),
            "r2": _r2(actual[members], predicted[members]),
            "spearman": _spearman(actual[members], predicted[members]),
            "top_k_agreement": _top_k_agreement(actual[members], predicted[members]),
        }
    return report


def format_quality(quality: dict[str, Any]) -> str:
    """Format surrogate quality for logs: an overall line, then one line per stratum."""
    lines = [
        f"surrogate held-out R² {quality['r2']:.3f}, Spearman {quality['spearman']:.3f}, "
        f"top-fifth agreement {quality['top_k_agreement']:.2f} ({quality.get('n_heldout', '?')} masks)"
    ]
    for kept, row in quality["per_stratum"].items():
        lines.append(
            f"  {kept} kept: n={row['n']} R² {row['r2']:.3f} Spearman {row['spearman']:.3f} "
            f"top-fifth {row['top_k_agreement']:.2f}"
        )
    return "\n".join(lines)


def stack_masks(masks: Sequence[str]) -> np.ndarray:
    """Convert '0'/'1' strings to a bool array [n, L]."""
    from compressor.engine import masks_to_array

    return masks_to_array(masks)
