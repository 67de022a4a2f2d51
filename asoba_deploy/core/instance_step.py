"""Send, await and poll one instance step: the actions of every instance-step Lambda.

`send` starts the command; `await` (the `<Step>.Await` task, `.waitForTaskToken`) keeps the
task token and reads the invocation once (core/completion.py; SSM's status-change event
completes the token otherwise); `poll` reads it once and answers (the step's outcome logic,
shared by both)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, commands, completion
from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.settings import Settings, settings
from asoba_deploy.core.state import (
    AwaitEvent,
    ExecutionState,
    InstanceStepEvent,
    PollEvent,
    SendEvent,
    parse_event,
)
from asoba_deploy.core.steps import STEPS, InstanceStep, Step
from asoba_deploy.core.validate_input import check_ssm_online

# A document that waits on the instance (the health check: resend_while) runs at most this long
# per command; a longer budget is covered by sending it again (the Resend path).
WAIT_RUN_SECONDS = 1800
# Its own wait ends this much before its executionTimeout: one last probe and the result line.
WAIT_REPORT_MARGIN_SECONDS = 10
# The agent's clock starts at delivery, and killing and reporting take a moment: its
# executionTimeout ends before the step's deadline, so a timeout always reads as TimedOut.
AGENT_REPORT_MARGIN_SECONDS = 15
AGENT_MIN_TIMEOUT_SECONDS = 5  # below it the real agent runs the script for 3600 s

Handler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]


def _instance(step: Step) -> InstanceStep:
    if step.instance is None:
        raise LookupError(f"step {step.name} has no document")
    return step.instance


def send_step(step: Step, config: Settings, ssm: Any, state: ExecutionState, now: float) -> CommandRef:
    spec = _instance(step)
    previous = None
    if state.command is not None and state.command.step == step.key and state.command.status == "Resend":
        previous = state.command
    if spec.require_online:
        check_ssm_online(ssm, state.instance_id)
    if spec.stops_in_flight and previous is None and state.execution_name:
        since = commands.timestamp_of(state.started_at) or now - commands.RESEND_LOOKBACK_SECONDS
        commands.cancel_in_flight(
            ssm, instance_id=state.instance_id, execution_name=state.execution_name, since=since
        )
    budget = spec.budget(config, state)
    parameters = spec.parameters(config, state)
    run_seconds = budget - AGENT_REPORT_MARGIN_SECONDS
    if spec.resend_while:
        # it waits on the instance itself, bounded by what is left of the step's budget
        left = int(previous.deadline - now) if previous else budget
        run_seconds = min(WAIT_RUN_SECONDS, left - AGENT_REPORT_MARGIN_SECONDS)
        parameters["WaitSeconds"] = str(max(0, run_seconds - WAIT_REPORT_MARGIN_SECONDS))
    parameters["executionTimeout"] = str(max(AGENT_MIN_TIMEOUT_SECONDS, run_seconds))
    attempt = previous.attempt + 1 if previous else 1
    ref = commands.send(
        ssm,
        step=step.key,
        document=config.document(str(step.document)),
        instance_id=state.instance_id,
        parameters=parameters,
        timeout_seconds=budget,
        now=now,
        log_group=config.stack.command_log_group,
        # names this send: a retried Lambda finds the command its first try sent
        comment=f"{step.name}#{attempt} {state.execution_name or ''}",
        previous=previous,
        idempotent=bool(state.execution_name),
        plugins=step.plugins,
    )
    update: dict[str, Any] = {
        "execution_name": state.execution_name,
        "wait_seconds": commands.next_wait(ref, now=now, interval=config.poll_seconds),
        "await_seconds": commands.await_timeout(ref, now=now, safety_net=config.safety_net_seconds),
    }
    if spec.expect is not None:
        update["expect"] = spec.expect(config, state)
    return ref.model_copy(update=update)


def poll_step(step: Step, config: Settings, ssm: Any, command: CommandRef, now: float) -> CommandRef:
    spec = _instance(step)
    ref = commands.poll(ssm, command, now=now, error=step.error)
    ref = ref.model_copy(
        update={"wait_seconds": commands.next_wait(ref, now=now, interval=config.poll_seconds)}
    )
    if ref.status == "Success" and spec.check is not None and ref.expect is not None:
        spec.check(ref.result or {}, ref.expect)
    if ref.status != "Success" or not spec.resend_while:
        return ref
    result = ref.result or {}
    status = str(result.get("status", "unknown"))
    if status == "healthy":
        return ref
    waited = int(now - ref.first_sent_at)
    if status in spec.resend_while:
        # sent again only while what is left of the budget holds another wait on the instance
        # (a budget longer than one command); otherwise this run was the last
        left = ref.deadline - now - AGENT_REPORT_MARGIN_SECONDS - WAIT_REPORT_MARGIN_SECONDS
        if left > config.poll_seconds:
            return ref.model_copy(update={"status": "Resend"})
        raise step.error(
            f"the runtime did not turn healthy within {waited} s (last status: {status}) on {ref.instance_id}"
        )
    detail = result.get("error") or (result.get("status_body") or {}).get("error") or status
    raise step.error(f"the runtime reports {status} after {waited} s: {detail}")


def token_table(config: Settings) -> completion.TokenTable:
    return completion.TokenTable(aws.client("dynamodb"), config.stack.token_table)


def run_action(step: Step, event: SendEvent | PollEvent | AwaitEvent, logger: Logger) -> dict[str, Any]:
    """One `send`, `await` or `poll` of `step` with this invocation's settings and clients."""
    config = settings()
    ssm = aws.client("ssm")
    if isinstance(event, AwaitEvent):
        logger.set_correlation_id(event.command.execution_name)
        verdict = completion.await_command(
            step,
            config,
            ssm,
            token_table(config),
            aws.client("stepfunctions"),
            event.command,
            event.token,
            time.time(),
        )
        logger.info(
            "awaiting", extra={"step": step.name, "command_id": event.command.command_id, "verdict": verdict}
        )
        # the task's output is what the token is completed with; this answer is not read
        return {"verdict": verdict}
    if isinstance(event, SendEvent):
        logger.set_correlation_id(event.state.execution_name)
        command = send_step(step, config, ssm, event.state, time.time())
        logger.info("sent", extra={"step": step.name, "command_id": command.command_id})
        return command.model_dump(mode="json")
    logger.set_correlation_id(event.command.execution_name)
    command = poll_step(step, config, ssm, event.command, time.time())
    if command.status != "InProgress":
        logger.info(
            "finished", extra={"step": step.name, "status": command.status, "ssm": command.ssm_status}
        )
    return command.model_dump(mode="json")


def instance_step_handler(name: str, logger: Logger, tracer: Tracer) -> Handler:
    """The whole Lambda handler of a registry step that only sends and polls its document."""
    step = STEPS[name]
    _instance(step)

    @logger.inject_lambda_context
    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
        parsed = parse_event(InstanceStepEvent, event, what=f"{step.name} event")
        return run_action(step, parsed, logger)

    return handler
