"""Token-level perplexity of a causal language model on a token stream.

Perplexity here is ``exp(mean NLL)`` over every predicted token, with the log-softmax
taken in float32 whatever dtype the model runs in. It is per token of the model's own
tokenizer, so it differs from lm-eval's ``word_perplexity``.

Two ways to cut the stream into model inputs of ``seq_len`` tokens:

``windows``
    Non-overlapping windows, the protocol of most layer-pruning papers. Without BOS the
    first token of each window is context only, so it is never scored. With BOS every
    stream token is scored, each window holding the BOS token and ``seq_len - 1``
    stream tokens.
``sliding``
    Windows that start ``stride`` tokens apart. Each window scores only the tokens that
    no earlier window scored, so every stream token after the first (every token, with
    BOS) is scored exactly once. After the first window each scored token has at least
    ``seq_len - stride`` positions of context, BOS included.

BOS policy: when a BOS token is prepended it is context only. It is never a predicted
token and never counted in ``n_tokens``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from compressor.components import StageResult, StrictConfig
from compressor.errors import CompressorError
from compressor.recipe import TextSpec

log = logging.getLogger(__name__)

Mode = Literal["windows", "sliding"]


@dataclass(frozen=True)
class Window:
    """One model input: stream tokens ``[begin, end)``, scoring stream positions ``[score_from, end)``."""

    begin: int
    end: int
    score_from: int


def plan_windows(n_tokens: int, seq_len: int, mode: Mode, bos: bool, stride: int | None = None) -> list[Window]:
    """Cut a stream of ``n_tokens`` tokens into windows of at most ``seq_len`` model positions.

    With ``bos`` each window contains the BOS token and then ``seq_len - 1`` stream tokens.
    Raises CompressorError when the stream is too short to score any token, or when the
    stride would skip or repeat tokens.
    """
    if seq_len < 2:
        raise CompressorError(f"seq_len {seq_len} is too small; a window needs at least 2 positions")
    capacity = seq_len - 1 if bos else seq_len  # stream tokens per window
    first_scored = 0 if bos else 1  # without BOS the stream's first token has no context

    if n_tokens <= first_scored:
        raise CompressorError(
            f"the text has {n_tokens} token(s), too few to score any; give a longer text or a larger max_tokens"
        )

    windows: list[Window] = []
    if mode == "windows":
        for begin in range(0, n_tokens, capacity):
            end = min(begin + capacity, n_tokens)
            score_from = begin if bos else begin + 1
            if end > score_from:  # a trailing 1-token window without BOS has nothing to score
                windows.append(Window(begin, end, score_from))
        return windows

    if mode != "sliding":
        raise CompressorError(f"unknown perplexity mode {mode!r}; use `windows` or `sliding`")
    if stride is None or not 1 <= stride <= seq_len - 1:
        raise CompressorError(
            f"stride {stride!r} is invalid for seq_len {seq_len}; give a stride between 1 and {seq_len - 1}, "
            "because a larger stride would leave tokens between windows unscored"
        )

    scored_up_to = first_scored  # every stream position below this is scored or is context only
    begin = 0
    while True:
        end = min(begin + capacity, n_tokens)
        windows.append(Window(begin, end, scored_up_to))
        scored_up_to = end
        if end == n_tokens:
            return windows
        begin += stride


def _batches(windows: list[Window], batch_size: int) -> list[list[Window]]:
    return [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]


@torch.inference_mode()
def score_windows(
    model: Any,
    stream: torch.Tensor,
    windows: list[Window],
    bos_token_id: int | None,
    batch_size: int = 4,
    pad_token_id: int = 0,
    progress: Any = None,
) -> tuple[float, int]:
    """Return (sum of NLL in nats, number of scored tokens) of ``stream`` over ``windows``.

    ``stream`` is a 1-D LongTensor. When ``bos_token_id`` is not None it is put before each
    window as context. Rows of a batch are right-padded: a causal model's logits at real
    positions never see the padding, so no attention mask is needed.
    """
    device = next(model.parameters()).device
    prefix = [] if bos_token_id is None else [bos_token_id]
    total_nll = 0.0
    total_tokens = 0

    for batch in _batches(windows, batch_size):
        rows = [prefix + stream[w.begin : w.end].tolist() for w in batch]
        width = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        logits = model(input_ids=input_ids.to(device), use_cache=False).logits  # [batch, width, vocab]

        for i, (window, row) in enumerate(zip(batch, rows)):
            # Row position p is stream position window.begin + p - len(prefix), and the logits
            # at p - 1 predict it.
            first = window.score_from - window.begin + len(prefix)
            last = len(row)
            targets = input_ids[i, first:last].to(device)
            log_probs = logits[i, first - 1 : last - 1].float().log_softmax(dim=-1)
            nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            total_nll += nll.double().sum().item()
            total_tokens += last - first

        if progress is not None:
            progress(len(batch))
    return total_nll, total_tokens


class PerplexityConfig(StrictConfig):
    """Config of the ``perplexity`` evaluator."""

    text: TextSpec | None = Field(
        None,
        description="Text to score; defaults to the recipe's `data.evaluation`. Only `source`, `split`, "
        "`text_field`, and (as defaults for the fields below) `seq_len`, `n_samples` and `bos` are used.",
    )
    mode: Mode = Field(
        "windows",
        description="`windows`: non-overlapping windows, the first token of each is context only unless BOS is "
        "prepended. `sliding`: windows `stride` tokens apart, each token scored exactly once.",
    )
    seq_len: int | None = Field(
        None, ge=2, le=131_072, description="Model positions per window, BOS included; defaults to the text's seq_len."
    )
    stride: int | None = Field(
        None, ge=1, description="Sliding mode only: tokens between window starts; defaults to seq_len // 2."
    )
    max_tokens: int | Literal["all"] | None = Field(
        None,
        description="Number of tokens taken from the start of the stream; `all` takes the whole stream. "
        "Defaults to what n_samples windows of the text hold: n_samples × seq_len, less one per window with BOS.",
    )
    batch_size: int = Field(4, ge=1, description="Windows per forward pass.")
    bos: Literal["auto", "always", "never"] | None = Field(
        None,
        description="BOS policy: `always` puts BOS before each window as context, `never` does not, `auto` "
        "follows the tokenizer. Defaults to the text's bos.",
    )

    @model_validator(mode="after")
    def _stride_needs_sliding(self) -> "PerplexityConfig":
        if self.stride is not None and self.mode != "sliding":
            raise ValueError(f"stride {self.stride} is set but mode is {self.mode!r}; set mode to `sliding` or drop stride")
        if isinstance(self.max_tokens, int) and self.max_tokens < 2:
            raise ValueError(f"max_tokens {self.max_tokens} is too small; give at least 2 or `all`")
        return self


def describe_source(spec: TextSpec) -> str:
    return spec.source if spec.split is None else f"{spec.source}:{spec.split}"


class PerplexityEvaluator:
    """Token perplexity of the handle's model on held-out text."""

    def __init__(self, config: PerplexityConfig):
        self.config = config

    def run(self, handle, ctx) -> StageResult:
        spec = self.config.text or ctx.evaluation_spec
        metrics, data = evaluate_perplexity(handle.model, handle.tokenizer, spec, self.config)
        return StageResult(handle, data=data, metrics=metrics)


def evaluate_perplexity(model: Any, tokenizer: Any, spec: TextSpec, config: PerplexityConfig) -> tuple[dict, dict]:
    """Score ``spec``'s token stream and return (metrics, data) as stored by the pipeline."""
    from compressor.data import resolve_bos, token_stream

    seq_len = config.seq_len or spec.seq_len
    stride = config.stride if config.stride is not None else max(1, seq_len // 2)
    policy = config.bos or spec.bos
    bos_id = tokenizer.bos_token_id if resolve_bos(spec.model_copy(update={"bos": policy}), tokenizer) else None

    stream = token_stream(spec, tokenizer)
    available = int(stream.numel())
    if config.max_tokens == "all":
        limit = available
    else:
        # By default as many tokens as n_samples windows hold, so `windows` mode gives n_samples windows.
        body = seq_len - 1 if bos_id is not None else seq_len
        limit = config.max_tokens if config.max_tokens is not None else spec.n_samples * body
    stream = stream[:limit]
    if available < limit:
        log.warning("text %s has %d tokens, fewer than the %d requested; scoring all of them",
                    describe_source(spec), available, limit)

    windows = plan_windows(int(stream.numel()), seq_len, config.mode, bos_id is not None,
                           stride if config.mode == "sliding" else None)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log.info("perplexity on %s (%s mode): %d tokens in %d windows of %d", describe_source(spec), config.mode,
             stream.numel(), len(windows), seq_len)

    nll_sum, n_tokens = _score_with_progress(model, stream, windows, bos_id, config.batch_size, pad_id)
    nll = nll_sum / n_tokens
    metrics = {"ppl_token": math.exp(nll), "nll_token": nll, "n_tokens": float(n_tokens)}
    data = {
        "mode": config.mode,
        "seq_len": seq_len,
        "stride": stride if config.mode == "sliding" else None,
        "bos": policy,
        "bos_prepended": bos_id is not None,
        "source": describe_source(spec),
        "max_tokens": limit,
        "stream_tokens": int(stream.numel()),
        "n_windows": len(windows),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        **{key: float(value) for key, value in metrics.items()},
    }
    return metrics, data


def _score_with_progress(model, stream, windows, bos_id, batch_size, pad_id) -> tuple[float, int]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("perplexity"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("windows", total=len(windows))
        return score_windows(model, stream, windows, bos_id, batch_size, pad_id,
                             progress=lambda n: progress.advance(task, n))
