"""A local AWS endpoint: moto's server on 127.0.0.1, in this process.

One HTTP endpoint serves boto3 clients, the aws CLI and s5cmd alike; running it in process
lets the Lambda runner and the sandbox agent hook moto's backends directly.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import boto3
import requests
from moto.server import ThreadedMotoServer

from local import dynamodb_atomic, events, iam, iam_http, lambda_runner

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _send_task_failure_keeps_its_cause() -> None:
    """moto's SendTaskFailure handler drops the request's `cause` (the backend takes it): pass it
    on, as Step Functions does, so a step failed by its token reads with its message. A moto
    internal: moto is pinned exactly."""
    from moto.core.responses import EmptyResult
    from moto.stepfunctions.responses import StepFunctionResponse

    if getattr(StepFunctionResponse.send_task_failure, "_keeps_cause", False):
        return

    def send_task_failure(self: StepFunctionResponse) -> Any:
        backend: Any = self.stepfunction_backend  # the executing (parser) backend takes the cause
        backend.send_task_failure(
            self._get_param("taskToken"), error=self._get_param("error"), cause=self._get_param("cause")
        )
        return EmptyResult()

    send_task_failure._keeps_cause = True  # type: ignore[attr-defined]
    StepFunctionResponse.send_task_failure = send_task_failure  # type: ignore[method-assign]


def _a_stopped_callback_task_aborts() -> None:
    """A `.waitForTaskToken` task whose execution is stopped ends with the execution ABORTED, as
    on AWS. moto prunes every evaluation of a stopped execution, its timeout's too, yet the task
    pops that timeout next: stopped between its invoke and its wait, it fails (States.Runtime)
    and the execution reads FAILED. Here such a task's failure after the stop is dropped, as a
    regular task's result is.

    A task its own TimeoutSeconds ended writes nothing more: moto leaves its evaluation running
    beside the state that already wrote TaskTimedOut and moved on, and that evaluation would
    write the task's TaskSucceeded into a later state's events (`_a_timed_out_token_is_refused`
    ends its wait at once). A moto internal: moto is pinned exactly."""
    import importlib

    from moto.stepfunctions.parser.asl.eval.callback.callback import CallbackTimeoutError
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped

    callback = (
        "moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback"
    )
    StateTaskServiceCallback = importlib.import_module(callback).StateTaskServiceCallback

    if getattr(StateTaskServiceCallback._eval_integration_pattern, "_stop_safe", False):
        return
    original = StateTaskServiceCallback._eval_integration_pattern

    def _eval_integration_pattern(self: Any, env: Any, *args: Any, **kwargs: Any) -> None:
        try:
            original(self, env, *args, **kwargs)
        except Exception:
            if env.is_running():
                raise
            if not isinstance(env.program_state(), ProgramStopped):
                raise  # timed out: the state already went on without this evaluation
            env.stack.append(None)  # stopped: nothing after this runs; the execution ends ABORTED
            return
        if not env.is_running() and not isinstance(env.program_state(), ProgramStopped):
            # completed after its state timed out: on AWS that completion was refused
            raise CallbackTimeoutError()

    _eval_integration_pattern._stop_safe = True  # type: ignore[attr-defined]
    StateTaskServiceCallback._eval_integration_pattern = _eval_integration_pattern


def _a_timed_out_token_is_refused() -> None:
    """A task token whose `.waitForTaskToken` task timed out answers SendTaskSuccess, Failure and
    Heartbeat with TaskTimedOut, as on AWS. moto kept the token open after the timeout: a late
    completion was accepted (and its task's TaskSucceeded written after the TaskTimedOut). Here
    the state's timeout marks its token timed out and wakes its waiting evaluation. A moto
    internal: moto is pinned exactly."""
    from moto.core.exceptions import AWSError
    from moto.stepfunctions.parser.asl.component.common.timeouts.timeout import EvalTimeoutError
    from moto.stepfunctions.parser.asl.component.state.exec.execute_state import ExecutionState
    from moto.stepfunctions.parser.asl.eval.callback.callback import (
        CallbackConsumerTimeout,
        CallbackPoolManager,
    )

    if getattr(ExecutionState._evaluate_with_timeout, "_times_out_token", False):
        return
    original = ExecutionState._evaluate_with_timeout

    # moto's backend would answer TaskDoesNotExist (or fail building TaskTimedOut): answer here,
    # with the code and message Step Functions gives
    def refusing(answer: Any) -> Any:
        def wrapped(self: Any, callback_id: str, *args: Any, **kwargs: Any) -> Any:
            endpoint = self.get(callback_id)
            if endpoint is not None and isinstance(endpoint.consumer_error, CallbackConsumerTimeout):
                raise AWSError(
                    "Task Timed Out: 'Provided task does not exist anymore'",
                    exception_type="TaskTimedOut",
                )
            return answer(self, callback_id, *args, **kwargs)

        return wrapped

    CallbackPoolManager.notify = refusing(CallbackPoolManager.notify)  # type: ignore[method-assign]
    CallbackPoolManager.heartbeat = refusing(CallbackPoolManager.heartbeat)  # type: ignore[method-assign]

    def _evaluate_with_timeout(self: Any, env: Any) -> None:
        try:
            original(self, env)
        except EvalTimeoutError:
            token = env.states.context_object.context_object_data.get("Task", {}).get("Token")
            endpoint = env.callback_pool_manager.get(token) if token else None
            if endpoint is not None:
                endpoint.report(CallbackConsumerTimeout())
                endpoint.interrupt_all()
            raise

    _evaluate_with_timeout._times_out_token = True  # type: ignore[attr-defined]
    ExecutionState._evaluate_with_timeout = _evaluate_with_timeout  # type: ignore[method-assign]


def _a_stopped_map_aborts() -> None:
    """An execution stopped while an inline Map runs ends ABORTED, as on AWS. moto aborts the
    Map's iterations, then fails reading the abort's details (a string where it expects an
    object): the execution read FAILED (States.Runtime). Here the Map's failure after the stop is
    dropped, as a task's is (`_a_stopped_callback_task_aborts`). A moto internal: moto is pinned
    exactly."""
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.state_map import StateMap

    if getattr(StateMap._eval_state, "_stop_safe", False):
        return
    original = StateMap._eval_state

    def _eval_state(self: Any, env: Any) -> None:
        try:
            original(self, env)
        except Exception:
            if env.is_running():
                raise

    _eval_state._stop_safe = True  # type: ignore[attr-defined]
    StateMap._eval_state = _eval_state  # type: ignore[method-assign]


class LocalCloud:
    """Start with `start()`; every boto3 client in this process then talks to it."""

    def __init__(
        self, region: str = "us-west-2", port: int | None = None, *, enforce_iam: bool = True
    ) -> None:
        self.region = region
        # Lambdas' calls authorized against their roles (local/iam.py); the harness keeps full rights
        self.enforce_iam = enforce_iam
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None
        self._saved_env: dict[str, str | None] = {}

    @property
    def environment(self) -> dict[str, str]:
        return {
            **FAKE_CREDENTIALS,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            # moto's Step Functions interpreter calls other services on localhost:MOTO_PORT
            "MOTO_PORT": str(self.port),
        }

    def start(self) -> LocalCloud:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        # the interpreter logs every caught task failure with its whole program: keep failures only
        logging.getLogger("moto.stepfunctions").setLevel(logging.CRITICAL)
        for key, value in self.environment.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        response = requests.post(
            f"{self.endpoint}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        )
        response.raise_for_status()
        lambda_runner.install()
        events.install()  # EventBridge rules deliver to Lambda targets (moto's cannot)
        _send_task_failure_keeps_its_cause()
        _a_stopped_callback_task_aborts()
        _a_timed_out_token_is_refused()
        _a_stopped_map_aborts()
        dynamodb_atomic.install()  # item writes serialized, as DynamoDB does
        if self.enforce_iam:
            iam.install()
            iam_http.wrap_server(self._server)  # the instance scripts' own S3 requests
        return self

    def stop(self) -> None:
        lambda_runner.uninstall()
        events.uninstall()
        if self.enforce_iam:
            iam.uninstall()
        if self._server is not None:
            self._server.stop()
            self._server = None
        for key, old in self._saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old

    def reset(self) -> None:
        requests.post(f"{self.endpoint}/moto-api/reset", timeout=10).raise_for_status()
        requests.post(
            f"{self.endpoint}/moto-api/config",
            json={"stepfunctions": {"execute_state_machine": True}},
            timeout=10,
        ).raise_for_status()

    def session(self) -> boto3.Session:
        return boto3.Session(region_name=self.region, **{k.lower(): v for k, v in FAKE_CREDENTIALS.items()})

    def client(self, service: str) -> Any:
        return self.session().client(service, endpoint_url=self.endpoint)  # type: ignore[call-overload]
