"""Generation types and the text bookkeeping around them; pure Python (no torch), so the web
layer can use them before the model is even imported, and tests can check them in isolation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

# "abort": the client went away or the service is shutting down; never sent to a client.
FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    # vLLM's extension: generate exactly max_tokens (benchmarks, load tests).
    ignore_eos: bool = False
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class IncrementalDecoder:
    """Token ids in, text deltas out.

    Decoding token by token is wrong for byte-level and sentencepiece tokenizers (a character
    may span tokens; spaces depend on the neighbour), and decoding everything each step is
    quadratic. This is the prefix-offset method of TGI/vLLM: decode a short window, emit only
    what is new, and hold back a trailing replacement character (an unfinished UTF-8 sequence).
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    @property
    def token_count(self) -> int:
        return len(self._ids)

    @property
    def last_token(self) -> int | None:
        return self._ids[-1] if self._ids else None

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever was held back; a broken byte sequence comes out as U+FFFD, as a full decode gives."""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset :])
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopTextBuffer:
    """Applies stop strings to streamed text.

    The tail that could still be the start of a stop string is held back, so a streaming client
    never receives text that the non-streaming answer would cut off.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = tuple(s for s in stop if s)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._text = ""
        self._emitted = 0
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text

    def feed(self, delta: str) -> str:
        """Add generated text; return the part that is now safe to send."""
        if self.stopped or not delta:
            return ""
        # A stop string that starts earlier than this was already fully visible and not found.
        search_from = max(0, len(self._text) - self._hold)
        self._text += delta
        cut = min(
            (i for i in (self._text.find(s, search_from) for s in self._stop) if i >= 0),
            default=-1,
        )
        if cut >= 0:
            self._text = self._text[:cut]
            self.stopped = True
            return self._take(len(self._text))
        return self._take(len(self._text) - self._hold)

    def finish(self) -> str:
        return self._take(len(self._text))

    def _take(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        out = self._text[self._emitted : end]
        self._emitted = end
        return out
