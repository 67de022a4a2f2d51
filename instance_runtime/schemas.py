"""Wire formats: the seed's /generate, /status and /health, and the OpenAI subset we serve.

Static limits live on the fields (a violation is a 422 naming the field); limits that depend on
the settings or the tokenizer (max_tokens ceiling, context length) are checked in the app.
Unknown fields are ignored, as OpenAI clients send options we do not use (user, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
)

from instance_runtime.generation import FinishReason

StopField = Annotated[
    str | list[Annotated[str, Field(min_length=1)]] | None,
    Field(default=None, description="Up to 4 strings; generation ends before the first one."),
]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    max_tokens: int | None = Field(default=None, ge=1)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopField = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, str) and not value:
            raise ValueError("a stop string must not be empty")
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop strings")
        return value

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


# ----- seed API ------------------------------------------------------------------------------


class GenerateRequest(_Request):
    prompt: str = Field(min_length=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)


class GenerateChoice(BaseModel):
    text: str
    finish_reason: FinishReason


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    choices: list[GenerateChoice]
    usage: Usage
    model: str
    created: int
    id: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    timestamp: str


class StatusResponse(BaseModel):
    status: Literal["loading", "healthy", "error"]
    model: str
    gpu_memory_used: int | None
    gpu_memory_total: int | None
    ram_usage_gb: float
    port: int
    timestamp: str
    service: str
    error: str | None = None
    # How this start loads the model: {"from": "disk" | "stream", "reason", "location",
    # "seconds" (to a loaded engine; null while loading), "stage_seconds", "streamed_bytes",
    # "source_bytes"}; null before the loader has begun.
    load: dict[str, Any] | None = None
    # ISO 8601 UTC time the last generation request finished (null before any): the orchestrator
    # stops the least recently used of several resident models first.
    last_request_at: str | None = None
    # The names in ADAPTERS (each also an OpenAI model id); empty without it.
    adapters: list[str] = Field(default_factory=list)


# ----- OpenAI ----------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _OpenAIRequest(_Request):
    model: str | None = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None


class CompletionRequest(_OpenAIRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False
    logprobs: None = Field(default=None, description="Not supported.")

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value: str | list[str]) -> str | list[str]:
        text = value if isinstance(value, str) else value[0]
        if not text:
            raise ValueError("the prompt must not be empty")
        return value

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # OpenAI sends {"content": "..."} deltas, not {"role": null, ...}.
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "asoba"
    max_model_len: int | None = None
    # A LoRA adapter's base id and its folder (vLLM's fields); absent on a full model.
    parent: str | None = None
    root: str | None = None

    @model_serializer(mode="wrap")
    def _omit_absent_lineage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A lone model's card stays as it was: no parent/root keys at all.
        body: dict[str, Any] = handler(self)
        for key in ("parent", "root"):
            if body.get(key) is None:
                body.pop(key, None)
        return body


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
