"""Run Lambda functions in process instead of in Docker (absent here).

moto invokes a function through `LambdaFunction._invoke_lambda(event) -> (payload, errored,
logs)`. We replace it with a call of the real handler named by the function's `Handler`,
loaded from the function's own code asset, with its own environment variables, and return
exceptions the way the Lambda runtime does (`errorType` = class name), so Retry/Catch match
our typed errors. The handler acts as the function's role: `local.iam` authorizes its calls.
This is a moto internal: moto is pinned exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import time
import traceback
import types
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moto.awslambda.models import LambdaFunction

from local import iam

# One invocation at a time: handlers read os.environ, which is process-wide.
_INVOKE_LOCK = threading.RLock()
_original_invoke = LambdaFunction._invoke_lambda


@dataclass
class FakeLambdaContext:
    function_name: str
    memory_limit_in_mb: int
    invoked_function_arn: str
    aws_request_id: str
    function_version: str = "$LATEST"
    log_group_name: str = ""
    log_stream_name: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """The function's variables in os.environ while it runs. A variable this process lacked is
    left set afterwards, not removed: other threads (the sandbox agent's and the interpreter's
    HTTP clients, via urllib's proxy lookup) iterate os.environ at any time, and a key removed
    under them raises KeyError there. Every function has the same keys (stacks/functions.py),
    so each invocation still sees only its own values."""
    saved = {key: os.environ[key] for key in values if key in os.environ}
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.update(saved)


_LOADED: dict[tuple[str, str], Callable[..., Any]] = {}
REPO_HANDLERS = Path(__file__).resolve().parents[1] / "lambdas"


def _asset_source(function: LambdaFunction, module: str) -> str | None:
    """The handler module's source from the function's deployed code zip (None: not in it)."""
    code = getattr(function, "code_bytes", None)
    path = module.replace(".", "/") + ".py"
    if not code:  # code given by S3 reference that moto did not keep: the repository's file
        local = REPO_HANDLERS / path
        return local.read_text() if local.is_file() else None
    with zipfile.ZipFile(io.BytesIO(code)) as archive:
        if path not in archive.namelist():
            return None
        return archive.read(path).decode()


def _load_handler(function: LambdaFunction, module: str, attribute: str) -> Callable[..., Any] | None:
    """Load the handler from the asset's own file, as the Lambda runtime would (its imports of
    asoba_deploy resolve to this environment's package, the same code the asset carries)."""
    source = _asset_source(function, module)
    if source is None:
        return None
    key = (module, hashlib.sha256(source.encode()).hexdigest())
    if key not in _LOADED:
        loaded = types.ModuleType(f"lambda_asset.{module}")
        loaded.__file__ = f"<asset>/{module.replace('.', '/')}.py"
        exec(compile(source, loaded.__file__, "exec"), loaded.__dict__)  # noqa: S102 - the asset's own code
        _LOADED[key] = getattr(loaded, attribute)
    return _LOADED[key]


# Test hook (`hold`): invocations whose event matches wait before they start, until released.
# Each hold: (matches, until, timeout, handler: only that function's invocations, or any)
_holds: list[
    tuple[Callable[[dict[str, Any]], bool], Callable[[dict[str, Any]], bool], float, str | None]
] = []
_holds_lock = threading.Lock()


@contextlib.contextmanager
def hold(
    matches: Callable[[dict[str, Any]], bool],
    until: Callable[[dict[str, Any]], bool],
    timeout: float = 120,
    *,
    handler: str | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """While inside, an invocation whose event `matches` starts only once `until(event)` holds (or
    after `timeout` s): to order it after something else (a command that ends before the step
    stored its token). `handler` ("handlers.sync.handler"): only that function's invocations.
    Yields the held events."""
    held: list[dict[str, Any]] = []

    def _matches(event: dict[str, Any]) -> bool:
        if matches(event):
            held.append(event)
            return True
        return False

    entry = (_matches, until, timeout, handler)
    with _holds_lock:
        _holds.append(entry)
    try:
        yield held
    finally:
        with _holds_lock:
            _holds.remove(entry)


def _wait_if_held(event: Any, handler: str) -> None:
    if not isinstance(event, dict):
        return
    with _holds_lock:
        holds = list(_holds)
    for matches, until, timeout, only in holds:
        if (only is None or only == handler) and matches(event):
            deadline = time.monotonic() + timeout
            while not until(event) and time.monotonic() < deadline:
                time.sleep(0.05)


def invoke_in_process(function: LambdaFunction, event: Any) -> tuple[str, bool, str]:
    if isinstance(event, str | bytes):
        event = json.loads(event or "{}")
    _wait_if_held(event, str(function.handler))
    module_name, _, attribute = str(function.handler).rpartition(".")
    environment = {str(k): str(v) for k, v in (function.environment_vars or {}).items()}
    environment.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": function.function_name,
            "AWS_REGION": function.region,
            "AWS_DEFAULT_REGION": function.region,
        }
    )
    context = FakeLambdaContext(
        function_name=function.function_name,
        memory_limit_in_mb=int(function.memory_size or 128),
        invoked_function_arn=function.function_arn,
        aws_request_id=str(uuid.uuid4()),
    )
    # every call the handler makes is authorized as the function's role (local/iam.py)
    with _INVOKE_LOCK, _environment(environment), iam.acting_as(str(function.role), function.function_name):
        # loaded under the function's environment: module-level Powertools objects read it
        handler = _load_handler(function, module_name, attribute)
        if handler is None:
            missing = f"No module named '{module_name}'"
            return json.dumps({"errorType": "Runtime.ImportModuleError", "errorMessage": missing}), True, ""
        try:
            result = handler(event, context)
        except Exception as error:
            payload = {
                "errorType": type(error).__name__,
                "errorMessage": str(error),
                "stackTrace": traceback.format_tb(error.__traceback__),
            }
            return json.dumps(payload), True, ""
    return json.dumps(result), False, ""


def install() -> None:
    """Make every moto Lambda invocation run in process (idempotent)."""

    def _invoke(self: LambdaFunction, event: Any = None) -> tuple[str, bool, str]:
        return invoke_in_process(self, event)

    LambdaFunction._invoke_lambda = _invoke  # type: ignore[method-assign]


def uninstall() -> None:
    LambdaFunction._invoke_lambda = _original_invoke  # type: ignore[method-assign]
