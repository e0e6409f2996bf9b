"""The utility engine: the calibration loss of a model with some decoder layers removed.

A *mask* has one entry per decoder layer of the current model: ``1`` keeps the layer and
``0`` removes it. :class:`UtilityEngine` returns the mean token negative log-likelihood
(NLL) of the masked model on fixed calibration windows. Estimators that score layers by
evaluating masks (Shapley surrogates, SLEB, the perplexity criterion) share it, because
the cost of those methods is almost entirely spent here.

Three things keep that cost down:

* **Skipping.** A removed layer is never executed. The engine swaps the model's layer
  ``ModuleList`` for the kept layers only (``ArchitectureAdapter.layer_subset``).
* **Prefix reuse.** The full model's hidden state entering every layer is computed once.
  Layers before a mask's first removed layer would reproduce those states exactly, so a
  mask's forward starts at that point. A pre-hook hands the cached state to the first kept
  layer after it, or to the final norm when no later layer is kept.
* **No repeats.** Each mask is evaluated at most once per engine (an in-memory dict) and
  at most once per store. Evaluations are written to the store in small batches as they
  finish, keyed by the model fingerprint, the calibration fingerprint and the mask, so a
  killed run repeats none of them.

:class:`ZeroedLayerEngine` reproduces the cost model of implementations that zero a
removed layer's weights: it runs every layer, re-evaluates duplicates and reuses nothing.
It gives the same NLL for pre-norm residual models and exists for benchmarks.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from compressor.errors import CompressorError

if TYPE_CHECKING:
    from compressor.models.handle import ModelHandle
    from compressor.store import Store

log = logging.getLogger(__name__)

STATUS_OK = "ok"
STATUS_NONFINITE = "nonfinite"


def mask_to_str(mask: Any, num_layers: int) -> str:
    """Normalise a mask (a '0'/'1' string, or a sequence of bools or 0/1 ints) to a string."""
    if isinstance(mask, str):
        text = mask.strip()
    else:
        try:
            values = list(np.asarray(mask).reshape(-1).tolist())
        except (TypeError, ValueError):
            raise CompressorError(f"mask {mask!r} is not a sequence of 0/1 values") from None
        bad = [v for v in values if v not in (0, 1, True, False)]
        if bad:
            raise CompressorError(f"mask {mask!r} contains {bad[0]!r}; use 1 to keep a layer and 0 to remove it")
        text = "".join("1" if v else "0" for v in values)
    if len(text) != num_layers or set(text) - {"0", "1"}:
        raise CompressorError(
            f"mask {text!r} is invalid: the model has {num_layers} decoder layers, so a mask needs "
            f"{num_layers} characters, each '1' (keep) or '0' (remove)"
        )
    return text


def masks_to_array(masks: Iterable[str]) -> np.ndarray:
    """Stack '0'/'1' mask strings into a bool array of shape [n_masks, num_layers]."""
    rows = [np.frombuffer(m.encode(), dtype=np.uint8) == ord("1") for m in masks]
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=bool)


def _replace_hidden_states(state: torch.Tensor):
    """Build a forward pre-hook that swaps a module's first input for ``state``."""

    def hook(_module, args, kwargs):
        if args:
            return (state,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = state
        return args, kwargs

    return hook


class _IdentityWithCost(nn.Module):
    """Runs the wrapped layer and discards its output, returning the input unchanged."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, hidden_states, *args, **kwargs):
        output = self.layer(hidden_states, *args, **kwargs)
        if isinstance(output, tuple):
            return (hidden_states,) + tuple(output[1:])
        return hidden_states


class UtilityEngine:
    """Evaluate layer masks of ``handle``'s model on calibration windows.

    ``batches`` is a :class:`compressor.data.TokenBatches` (``input_ids`` of shape
    [n_windows, seq_len] and a ``fingerprint``). ``store`` is an optional
    :class:`compressor.store.Store` that persists every evaluation. ``batch_size`` is the
    number of windows per forward pass. ``cache_device`` stores the cached hidden states
    (default: the model's device). Their size is n_windows × seq_len × hidden × (layers + 1)
    values in the model dtype, which is 91 MB for SmolLM2 on 10×128 tokens in fp32.
    """

    reuse_prefix = True
    skip_removed = True
    deduplicate = True

    def __init__(
        self,
        handle: "ModelHandle",
        batches: Any,
        store: "Store | None" = None,
        progress: bool = True,
        batch_size: int = 8,
        cache_device: str | None = None,
        flush_every: int = 8,
    ):
        input_ids = getattr(batches, "input_ids", None)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] < 2:
            raise CompressorError(
                "calibration batches must have `input_ids` of shape [n_windows, seq_len] with seq_len >= 2; "
                f"got {getattr(input_ids, 'shape', type(input_ids).__name__)}"
            )
        if batch_size < 1:
            raise CompressorError(f"batch_size {batch_size} is invalid; use 1 or more windows per forward pass")
        self.handle = handle
        self.batches = batches
        self.store = store
        self.progress = progress
        self.batch_size = batch_size
        self.flush_every = max(1, flush_every)
        self.num_layers = handle.num_layers
        self.model_fp = handle.fingerprint
        self.data_fp = str(batches.fingerprint)
        self.device = torch.device(handle.device) if handle.device else next(handle.model.parameters()).device
        self.cache_device = torch.device(cache_device) if cache_device else self.device
        self.input_ids = input_ids.to(self.device)
        self.n_tokens = int(input_ids.shape[0] * (input_ids.shape[1] - 1))

        self.failures: list[str] = []
        self.stats: dict[str, float] = {"evaluations": 0, "cache_hits": 0, "token_layers": 0, "seconds": 0.0}
        self._results: dict[str, float] = {}
        self._pending: list[dict[str, Any]] = []
        self._prefix_states: list[list[torch.Tensor]] | None = None
        self._full_nll: float | None = None

        if store is not None and self.deduplicate:
            for mask, row in store.load_mask_evaluations(self.model_fp, self.data_fp).items():
                if len(mask) != self.num_layers:
                    continue
                self._results[mask] = float("nan") if row.nll is None else float(row.nll)
                if row.status == STATUS_NONFINITE:
                    self.failures.append(mask)
            if self._results:
                log.info("loaded %d stored mask evaluations for model %s", len(self._results), self.model_fp)

    # ------------------------------------------------------------------ public API

    @property
    def full_mask(self) -> str:
        return "1" * self.num_layers

    @property
    def full_nll(self) -> float:
        """NLL of the unpruned model (also fills the prefix cache on first use)."""
        if self._full_nll is None:
            self._full_nll = float(self.evaluate([self.full_mask])[0])
        return self._full_nll

    def nll(self, mask: Any) -> float:
        """Return the mean token NLL (nats) with only the layers of ``mask`` kept; NaN if non-finite."""
        return float(self.evaluate([mask])[0])

    def known(self, mask: Any) -> bool:
        """Return whether ``mask`` has been evaluated already (in this engine or in the store)."""
        return mask_to_str(mask, self.num_layers) in self._results

    def evaluate(self, masks: Iterable[Any], description: str = "evaluating masks") -> np.ndarray:
        """Return the NLL of each mask, in order; NaN marks a non-finite loss.

        Masks already known (from this engine or the store) are not evaluated again.
        New results are written to the store every ``flush_every`` evaluations, and once
        more when this call ends, even through an exception or a keyboard interrupt.
        """
        keys = [mask_to_str(m, self.num_layers) for m in masks]
        if self.deduplicate:
            todo = list(dict.fromkeys(k for k in keys if k not in self._results))
        else:
            todo = list(keys)
        self.stats["cache_hits"] += len(keys) - len(todo)
        if todo and self.reuse_prefix and self._prefix_states is None:
            # Caching the prefix states runs the full model, which also evaluates the full mask.
            self._capture_prefix_states()
            todo = [k for k in todo if k not in self._results]

        fresh: list[float] = []
        try:
            with self._progress_bar(len(todo), description) as advance:
                for key in todo:
                    fresh.append(self._evaluate_one(key))
                    advance()
        finally:
            self.flush()

        if not self.deduplicate:
            values = iter(fresh)
            return np.array([next(values) for _ in keys], dtype=float)
        return np.array([self._results[k] for k in keys], dtype=float)

    def flush(self) -> None:
        """Write evaluations not yet stored to the store."""
        if self.store is not None and self._pending:
            self.store.add_mask_evaluations(self.model_fp, self.data_fp, self._pending)
        self._pending = []

    def utility(self, nll: np.ndarray | float, kind: str = "neg_nll") -> np.ndarray:
        """Map NLL to a utility: ``neg_nll`` is −NLL, ``ppl_ratio`` is PPL(full) / PPL(mask)."""
        nll = np.asarray(nll, dtype=float)
        if kind == "neg_nll":
            return -nll
        if kind == "ppl_ratio":
            return np.exp(self.full_nll - nll)
        raise CompressorError(f"utility {kind!r} is unknown; use 'neg_nll' or 'ppl_ratio'")

    def as_game(self, utility: str = "neg_nll", nan_value: float | None = None):
        """Wrap the real model as a :class:`shapiq.Game` whose players are the decoder layers.

        A coalition is the set of kept layers. A non-finite loss gets ``nan_value``
        (default: the utility of keeping no layer, the worst meaningful value).
        """
        return _EngineGame(self, utility, nan_value)

    # ------------------------------------------------------------------ evaluation

    def _evaluate_one(self, key: str) -> float:
        start = time.perf_counter()
        nll = self._forward_nll(key)
        seconds = time.perf_counter() - start

        status = STATUS_OK
        if not math.isfinite(nll):
            status = STATUS_NONFINITE
            nll = float("nan")
            self.failures.append(key)
            log.warning("mask %s gave a non-finite calibration loss; it is recorded as a failure", key)
        self._results[key] = nll
        self.stats["evaluations"] += 1
        self.stats["seconds"] += seconds
        self._pending.append(dict(mask=key, nll=nll, n_tokens=self.n_tokens, status=status, seconds=seconds))
        if len(self._pending) >= self.flush_every:
            self.flush()
        return nll

    def _windows(self) -> list[torch.Tensor]:
        return list(torch.split(self.input_ids, self.batch_size))

    @torch.inference_mode()
    def _forward_nll(self, key: str) -> float:
        if self.reuse_prefix and self._prefix_states is None:
            self._capture_prefix_states()

        kept = [i for i, c in enumerate(key) if c == "1"]
        first_removed = key.find("0")
        total = 0.0
        for window_index, ids in enumerate(self._windows()):
            if not self.skip_removed:
                total += self._run_all_layers(ids, key)
            elif self.reuse_prefix and first_removed >= 0:
                state = self._prefix_states[window_index][first_removed].to(self.device)
                later = [i for i in kept if i > first_removed]
                total += self._run_from_state(ids, later, state)
            else:
                total += self._run_subset(ids, kept)
        return total / self.n_tokens

    def _run_subset(self, ids: torch.Tensor, keep: list[int], hooks: Sequence[tuple[nn.Module, Any]] = ()) -> float:
        model = self.handle.model
        with self.handle.adapter.layer_subset(model, keep):
            handles = [module.register_forward_pre_hook(hook, with_kwargs=True) for module, hook in hooks]
            try:
                logits = model(input_ids=ids, use_cache=False).logits
            finally:
                for h in handles:
                    h.remove()
        self.stats["token_layers"] += ids.numel() * len(keep)
        return _summed_nll(logits, ids)

    def _run_from_state(self, ids: torch.Tensor, later: list[int], state: torch.Tensor) -> float:
        """Run only the kept layers in ``later``, the first of them fed ``state``."""
        hook = _replace_hidden_states(state)
        if later:
            target = self.handle.layers[later[0]]
        else:
            target = self.handle.adapter.get_norm(self.handle.model)
            if target is None:
                return self._run_subset(ids, later)
        return self._run_subset(ids, later, hooks=[(target, hook)])

    def _run_all_layers(self, ids: torch.Tensor, key: str) -> float:
        layers = self.handle.layers
        wrapped = [layer if c == "1" else _IdentityWithCost(layer) for layer, c in zip(layers, key)]
        adapter = self.handle.adapter
        model = self.handle.model
        adapter.set_layers(model, nn.ModuleList(wrapped))
        try:
            logits = model(input_ids=ids, use_cache=False).logits
        finally:
            adapter.set_layers(model, layers)
        self.stats["token_layers"] += ids.numel() * self.num_layers
        return _summed_nll(logits, ids)

    @torch.inference_mode()
    def _capture_prefix_states(self) -> None:
        """Run the full model once per window, keeping each layer's input hidden state.

        The last entry of each window's list is the input of the final norm. The full
        model's NLL is recorded on the way, so the full mask costs no extra forward.
        """
        layers = self.handle.layers
        norm = self.handle.adapter.get_norm(self.handle.model)
        modules = list(layers) + ([norm] if norm is not None else [])
        self._prefix_states = []
        start = time.perf_counter()
        total = 0.0
        for ids in self._windows():
            captured: list[torch.Tensor | None] = [None] * len(modules)

            def make_hook(position: int):
                def hook(_module, args, kwargs):
                    state = args[0] if args else kwargs["hidden_states"]
                    captured[position] = state.detach().to(self.cache_device, copy=True)

                return hook

            handles = [m.register_forward_pre_hook(make_hook(p), with_kwargs=True) for p, m in enumerate(modules)]
            try:
                logits = self.handle.model(input_ids=ids, use_cache=False).logits
            finally:
                for h in handles:
                    h.remove()
            missing = [p for p, s in enumerate(captured) if s is None]
            if missing:
                raise CompressorError(
                    f"layers {missing} of {type(self.handle.model).__name__} never received a hidden state "
                    "during the forward pass; the architecture adapter does not match this model's layers"
                )
            self._prefix_states.append(captured)
            total += _summed_nll(logits, ids)
            self.stats["token_layers"] += ids.numel() * self.num_layers

        seconds = time.perf_counter() - start
        key = self.full_mask
        if key not in self._results:
            nll = total / self.n_tokens
            status = STATUS_OK if math.isfinite(nll) else STATUS_NONFINITE
            self._results[key] = nll if status == STATUS_OK else float("nan")
            self.stats["evaluations"] += 1
            self.stats["seconds"] += seconds
            self._pending.append(dict(mask=key, nll=self._results[key], n_tokens=self.n_tokens,
                                      status=status, seconds=seconds))

    # ------------------------------------------------------------------ progress

    def _progress_bar(self, total: int, description: str):
        return _ProgressBar(total, description, enabled=self.progress and total > 1)


class ZeroedLayerEngine(UtilityEngine):
    """The cost model of zeroing removed layers: every layer runs, nothing is reused.

    A removed layer is executed and its output discarded (identity with the cost of a
    layer), duplicates are evaluated again, and no prefix state is cached. It reads
    nothing from the store, but still writes to it when given one.
    """

    reuse_prefix = False
    skip_removed = False
    deduplicate = False


def _summed_nll(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Sum of next-token NLL over ``ids[:, 1:]``, computed in fp32."""
    # logits: [batch, seq, vocab]; position t predicts token t + 1.
    shifted = logits[:, :-1, :].float()
    targets = ids[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1), reduction="sum"
    )
    return float(loss)


def _rate_column_class():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Evaluations per second, or seconds per evaluation when slower than one a second."""

        def render(self, task):
            speed = task.speed
            if not speed:
                return Text("-- masks/s")
            if speed >= 1:
                return Text(f"{speed:.2f} masks/s")
            return Text(f"{1 / speed:.1f} s/mask")

    return RateColumn


def _RateColumn():
    return _rate_column_class()()


class _ProgressBar:
    """A rich progress bar with evaluations done, rate and time remaining."""

    def __init__(self, total: int, description: str, enabled: bool):
        self.total = total
        self.description = description
        self.enabled = enabled
        self._progress = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
        )
        self._progress.start()
        task = self._progress.add_task(self.description, total=self.total)
        return lambda: self._progress.advance(task)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False


class _EngineGame:
    """Factory shim so ``shapiq`` is imported only when a game is requested."""

    def __new__(cls, engine: UtilityEngine, utility: str, nan_value: float | None):
        import shapiq

        class EngineGame(shapiq.Game):
            """The real model as a cooperative game over its decoder layers."""

            def __init__(self):
                super().__init__(n_players=engine.num_layers, normalize=False)
                self.engine = engine
                self.utility_kind = utility
                self.nan_value = nan_value

            def value_function(self, coalitions: np.ndarray) -> np.ndarray:
                coalitions = np.asarray(coalitions, dtype=bool).reshape(-1, engine.num_layers)
                nll = engine.evaluate(list(coalitions), description="evaluating coalitions")
                values = engine.utility(nll, self.utility_kind)
                bad = ~np.isfinite(values)
                if bad.any():
                    fallback = self.nan_value
                    if fallback is None:
                        empty = engine.evaluate(["0" * engine.num_layers])[0]
                        fallback = float(engine.utility(empty, self.utility_kind))
                        if not math.isfinite(fallback):
                            fallback = 0.0
                    values[bad] = fallback
                return values

        return EngineGame()
