"""The runtime's pure parts, without a server: settings, text bookkeeping, quantization rules,
admission."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from instance_runtime import __version__
from instance_runtime.engine import resolve_quantization
from instance_runtime.errors import ConfigurationError, QueueFull, ShuttingDown
from instance_runtime.generation import IncrementalDecoder, StopTextBuffer
from instance_runtime.scheduler import Admission
from instance_runtime.settings import RuntimeSettings


def test_version_is_a_string() -> None:
    assert isinstance(__version__, str) and __version__.count(".") == 2


def test_settings_come_from_the_env_file_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the deployment's env file, and one variable also set in the environment
    env_file = tmp_path / "env"
    env_file.write_text(
        "MODEL_PATH=/opt/models/qwen3-14b\nPORT=8000\nQUANTIZATION=bnb-4bit\nQUEUE_SIZE=3\n"
        "CONTEXT_LENGTH=\nMISTRAL_STATUS_URL=http://localhost:8000/status\n"
    )
    monkeypatch.setenv("ENV_FILE", str(env_file))
    monkeypatch.setenv("QUEUE_SIZE", "5")
    for name in ("MODEL_PATH", "PORT", "QUANTIZATION", "CONTEXT_LENGTH", "MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    # When the service reads its settings
    settings = RuntimeSettings.from_env()
    # Then the file supplies values, the environment overrides it, blanks mean defaults
    assert settings.model_path == Path("/opt/models/qwen3-14b")
    assert settings.port == 8000
    assert settings.quantization == "bnb-4bit"
    assert settings.queue_size == 5
    assert settings.context_length is None
    assert settings.served_model_name == "qwen3-14b"
    assert settings.host == "0.0.0.0"


def test_settings_refuse_an_unknown_quantization(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENV_FILE", raising=False)
    monkeypatch.setenv("MODEL_PATH", "/m")
    monkeypatch.setenv("QUANTIZATION", "int3")
    with pytest.raises(ValueError, match="quantization"):
        RuntimeSettings.from_env()


def test_default_max_tokens_never_exceeds_the_limit() -> None:
    settings = RuntimeSettings(model_path=Path("/m"), max_new_tokens=64, default_max_tokens=512)
    assert settings.default_max_tokens == 64


@pytest.mark.parametrize(
    ("requested", "checkpoint", "device", "allow", "expected"),
    [
        ("none", None, "cpu", False, "none"),
        ("bnb-4bit", None, "cuda", False, "bnb-4bit"),
        ("bnb-4bit", None, "cpu", True, "bnb-4bit"),
        ("none", "awq", "cuda", False, "checkpoint"),
        ("awq", "awq", "cuda", False, "checkpoint"),
        ("bnb-4bit", "gptq", "cuda", False, "checkpoint"),
        ("none", "bitsandbytes", "cpu", True, "checkpoint"),
    ],
)
def test_quantization_follows_the_setting_and_the_checkpoint(
    requested: str, checkpoint: str | None, device: str, allow: bool, expected: str
) -> None:
    assert resolve_quantization(requested, checkpoint, device, allow) == expected


@pytest.mark.parametrize(
    ("requested", "checkpoint", "device", "message"),
    [
        ("bnb-4bit", None, "cpu", "ALLOW_CPU_QUANTIZATION"),
        ("awq", None, "cuda", "pre-quantized AWQ"),
        ("awq", "gptq", "cuda", "gptq"),
        ("none", "bitsandbytes", "cpu", "ALLOW_CPU_QUANTIZATION"),
    ],
)
def test_impossible_quantization_is_refused_with_a_reason(
    requested: str, checkpoint: str | None, device: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        resolve_quantization(requested, checkpoint, device, False)


def test_stop_buffer_holds_back_what_may_start_a_stop_string() -> None:
    buffer = StopTextBuffer(["END"])
    sent = [buffer.feed(part) for part in ["Hello E", "N", "D and more"]]
    assert "".join(sent) == "Hello "
    assert buffer.stopped and buffer.text == "Hello "
    assert buffer.feed("ignored") == "" and buffer.finish() == ""


def test_stop_buffer_releases_the_held_tail_at_the_end() -> None:
    buffer = StopTextBuffer(["###"])
    sent = buffer.feed("a#") + buffer.feed("b#")
    assert sent == "a#"  # "b#" might still become "b###"
    assert buffer.finish() == "b#"
    assert not buffer.stopped


def test_stop_buffer_picks_the_earliest_of_several_stops() -> None:
    buffer = StopTextBuffer(["zz", "b"])
    assert buffer.feed("aaabzz") == "aaa"


def test_incremental_decoding_matches_a_full_decode(tiny_llama: Path) -> None:
    # Given text whose characters span several byte-level tokens
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    text = "Grüße, 東京! naïve café — 🙂 done"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text) // 2
    decoder = IncrementalDecoder(lambda chunk: str(tokenizer.decode(list(chunk), skip_special_tokens=True)))
    # When ids arrive one at a time
    deltas = [decoder.push(i) for i in ids] + [decoder.flush()]
    # Then no delta carries half a character, and together they are the text
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text
    assert decoder.token_count == len(ids)


def test_admission_refuses_beyond_the_batch_and_queue_and_frees_slots() -> None:
    async def scenario() -> None:
        admission = Admission(running=2, queue_size=1, retry_after_s=4)
        loop = asyncio.get_running_loop()
        done = [loop.create_future() for _ in range(3)]
        for future in done:
            admission.acquire()
            admission.release_when_done(future)
        # The batch's two plus one waiting: the fourth is refused with the Retry-After hint
        with pytest.raises(QueueFull) as excinfo:
            admission.acquire()
        assert excinfo.value.retry_after_s == 4
        # A slot comes back when the engine is done with a request, not before
        done[0].set_result(None)
        await asyncio.sleep(0)
        assert admission.inflight == 2
        admission.acquire()
        for future in done[1:]:
            future.set_result(None)
        admission.release_now()
        # Closing refuses new requests, and reports whether the drain emptied it
        assert await admission.close(drain_timeout_s=1) is True
        with pytest.raises(ShuttingDown):
            admission.acquire()

    asyncio.run(scenario())


def test_admission_close_reports_what_outlives_the_drain() -> None:
    async def scenario() -> None:
        admission = Admission(running=1, queue_size=0, retry_after_s=1)
        admission.acquire()
        assert await admission.close(drain_timeout_s=0.1) is False
        assert admission.inflight == 1

    asyncio.run(scenario())
