"""Continuous batching for transformers: one forward per step over every running request.

A group of new requests is prefilled together (left padded), then each step feeds every row its
last token against the shared KV cache. A finished row is dropped at once (its slot is free for
the next step) and new rows join at a step boundary: their cache is left padded to the batch's
length and stacked under it. Rows differ in length, so each carries its own attention mask and
position ids, as generate() does for a padded batch.

Everything per request (max_tokens, stop strings, greedy or temperature/top_p sampling, seed,
EOS, cancellation) is applied per row. All rows of a batch run as one served model (the base, or
one LoRA adapter of ADAPTERS): the caller groups requests by ``model``. Single-threaded: one
worker owns a ``BatchDecoder``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from instance_runtime.generation import (
    FinishReason,
    GenerationResult,
    IncrementalDecoder,
    SamplingParams,
    StopTextBuffer,
)

if TYPE_CHECKING:
    from instance_runtime.engine import Engine


class RowSink(Protocol):
    """Where one request's output goes; called from the worker thread."""

    def cancelled(self) -> bool: ...
    def first_token(self) -> None: ...
    def text(self, delta: str) -> None: ...
    def finish(self, result: GenerationResult) -> None: ...
    def fail(self, exc: BaseException) -> None: ...


@dataclass
class BatchRequest:
    prompt_ids: Sequence[int]
    params: SamplingParams
    sink: RowSink
    model: str | None = None  # the served model id it runs as (None: MODEL_NAME's)


@dataclass
class _Row:
    request: BatchRequest
    decoder: IncrementalDecoder
    stops: StopTextBuffer
    generator: torch.Generator | None
    length: int  # real (unpadded) tokens of this row in the cache
    pending: int = -1  # the last sampled token, fed to the model at the next step
    finish: FinishReason | None = None


@dataclass
class DecoderStats:
    steps: int = 0  # decode forwards over the batch
    row_steps: int = 0  # sum of the batch sizes of those forwards
    prefills: int = 0
    peak_batch_size: int = 0


class BatchDecoder:
    def __init__(self, engine: Engine, max_batch_size: int) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.model: Any = engine.model
        self.device = engine.model.device
        self.rows: list[_Row] = []
        self.serving: str | None = None  # the served model of the rows (meaningful while there are rows)
        self.stats = DecoderStats()
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # (rows, cache length): 1 real, 0 padding
        # Sliding-window or recurrent layers cannot be padded and stacked: such models run a
        # static batch per round (new requests wait until the batch is empty).
        self._joinable = True
        self._eos = sorted(engine.eos_token_ids)
        self._pad = engine.pad_token_id if engine.pad_token_id is not None else 0

    @property
    def free_slots(self) -> int:
        if self.rows and not self._joinable:
            return 0
        return self.max_batch_size - len(self.rows)

    # ----- the two operations ------------------------------------------------------------------

    @torch.inference_mode()
    def add(self, requests: Sequence[BatchRequest]) -> None:
        """Prefill new requests as one padded group, emit their first token, join the batch."""
        model = requests[0].model
        if any(r.model != model for r in requests) or (self.rows and model != self.serving):
            # A forward has one adapter active: mixing would answer some rows with another model.
            raise ValueError("requests of different served models cannot share a batch")
        self.serving = model
        rows = [self._new_row(r) for r in requests]
        width = max(r.length for r in rows)
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - row.length :] = torch.tensor(list(row.request.prompt_ids), dtype=torch.long)
            mask[i, width - row.length :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, cache)
        self.stats.prefills += 1
        self._joinable = self._joinable and all(type(layer) is DynamicLayer for layer in cache.layers)
        self._emit(rows, self._sample(rows, logits))
        self._merge(rows, cache, mask)
        self._drop_finished()

    @torch.inference_mode()
    def step(self) -> None:
        """One decode forward over every running row."""
        self._drop_finished()  # cancellations that arrived since the last step
        if not self.rows:
            return
        assert self._cache is not None and self._mask is not None
        ids = torch.tensor([[row.pending] for row in self.rows], dtype=torch.long, device=self.device)
        mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        logits = self._forward(ids, mask, self._cache)
        self._mask = mask
        for row in self.rows:
            row.length += 1
        self.stats.steps += 1
        self.stats.row_steps += len(self.rows)
        self.stats.peak_batch_size = max(self.stats.peak_batch_size, len(self.rows))
        self._emit(self.rows, self._sample(self.rows, logits))
        self._drop_finished()

    def fail_all(self) -> list[BatchRequest]:
        """Forget every row (after a failed forward); the caller tells their clients."""
        failed = [row.request for row in self.rows]
        self.rows = []
        self._cache = self._mask = None
        self._joinable = True
        return failed

    # ----- model ---------------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        # Positions count real tokens only, so a padded row sees the same RoPE angles as alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        with self.engine.use_model(self.serving):
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1, :].float()

    def _merge(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self._cache, self._mask = rows, cache, mask
            return
        assert self._cache is not None and self._mask is not None
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old, new in zip(_full_layers(self._cache), _full_layers(cache), strict=True):
            assert old.keys is not None and old.values is not None
            assert new.keys is not None and new.values is not None
            old.keys = torch.cat([_left_pad(old.keys, width, -2), _left_pad(new.keys, width, -2)])
            old.values = torch.cat([_left_pad(old.values, width, -2), _left_pad(new.values, width, -2)])
        self._mask = torch.cat([_left_pad(self._mask, width, -1), _left_pad(mask, width, -1)])
        self.rows = self.rows + rows

    def _drop_finished(self) -> None:
        for row in self.rows:
            if row.finish is None and row.request.sink.cancelled():
                self._finish(row, "abort")
        keep = [i for i, row in enumerate(self.rows) if row.finish is None]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self._cache, self._mask = [], None, None
            self._joinable = True
            return
        assert self._cache is not None and self._mask is not None
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, index)
        if not self._joinable:
            self._cache.batch_select_indices(index)
            self._mask = mask
        else:
            # Columns that are padding in every remaining row are dead weight in each forward.
            first = int(mask.any(dim=0).nonzero()[0, 0])
            for layer in _full_layers(self._cache):
                assert layer.keys is not None and layer.values is not None
                layer.keys = layer.keys.index_select(0, index)[..., first:, :]
                layer.values = layer.values.index_select(0, index)[..., first:, :]
            self._mask = mask[:, first:]
        self.rows = [self.rows[i] for i in keep]

    # ----- per-request bookkeeping ---------------------------------------------------------------

    def _new_row(self, request: BatchRequest) -> _Row:
        decode_tokenizer = self.engine.decode_tokenizer
        decoder = IncrementalDecoder(lambda ids: decode_tokenizer.decode(list(ids), skip_special_tokens=True))
        generator = None
        if request.params.seed is not None and not request.params.greedy:
            generator = torch.Generator(device=self.device).manual_seed(request.params.seed)
        return _Row(
            request=request,
            decoder=decoder,
            stops=StopTextBuffer(request.params.stop),
            generator=generator,
            length=len(request.prompt_ids),
        )

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        ignore = [i for i, row in enumerate(rows) if row.request.params.ignore_eos]
        if ignore and self._eos:
            # ignore_eos generates exactly max_tokens: EOS may not be picked at all.
            rows_at = torch.tensor(ignore, device=logits.device)[:, None]
            logits[rows_at, torch.tensor(self._eos, device=logits.device)[None, :]] = float("-inf")
        tokens = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            params = row.request.params
            if not params.greedy:
                tokens[i] = _sample_one(logits[i], params, row.generator)
        return [int(t) for t in tokens]

    def _emit(self, rows: list[_Row], tokens: list[int]) -> None:
        for row, token in zip(rows, tokens, strict=True):
            if row.finish is not None:
                continue
            row.pending = token
            params = row.request.params
            if row.decoder.token_count == 0:
                row.request.sink.first_token()
            delta = row.stops.feed(row.decoder.push(token))
            if delta:
                row.request.sink.text(delta)
            if row.stops.stopped or (token in self.engine.eos_token_ids and not params.ignore_eos):
                self._finish(row, "stop")
            elif row.decoder.token_count >= params.max_tokens:
                self._finish(row, "length")

    def _finish(self, row: _Row, reason: FinishReason) -> None:
        row.finish = reason
        tail = row.stops.feed(row.decoder.flush()) + row.stops.finish()
        if tail:
            row.request.sink.text(tail)
        row.request.sink.finish(
            GenerationResult(
                text=row.stops.text,
                prompt_tokens=len(row.request.prompt_ids),
                completion_tokens=row.decoder.token_count,
                finish_reason=reason,
            )
        )


def _full_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The layers of a joinable cache: plain full-attention ones (checked after the prefill)."""
    return [layer for layer in cache.layers if isinstance(layer, DynamicLayer)]


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    # F.pad lists (left, right) pairs from the last dimension backwards.
    pad = [0, 0] * (-dim - 1) + [missing, 0]
    return F.pad(tensor, pad)


def _sample_one(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Temperature then top-p (nucleus), as transformers' warpers do; no top-k (OpenAI has none)."""
    scores = logits / params.temperature
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - params.top_p)
        remove[-1] = False  # keep at least the most likely token
        scores = scores.masked_fill(remove.scatter(0, order, remove), float("-inf"))
    probs = scores.softmax(dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


class SyncSink:
    """A sink for a caller that blocks on one request (Engine.generate, tests, benchmarks)."""

    def __init__(self, on_text: Callable[[str], None] | None, cancel: Callable[[], bool]) -> None:
        self._on_text = on_text
        self._cancel = cancel
        self.result: GenerationResult | None = None
        self.error: BaseException | None = None

    def cancelled(self) -> bool:
        return self._cancel()

    def first_token(self) -> None:
        pass

    def text(self, delta: str) -> None:
        if self._on_text is not None:
            self._on_text(delta)

    def finish(self, result: GenerationResult) -> None:
        self.result = result

    def fail(self, exc: BaseException) -> None:
        self.error = exc
