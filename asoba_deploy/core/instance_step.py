"""Send and poll one instance step: the two actions of every instance-step Lambda."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from asoba_deploy.core import aws, commands
from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.settings import Settings, settings
from asoba_deploy.core.state import ExecutionState, InstanceStepEvent, PollEvent, SendEvent, parse_event
from asoba_deploy.core.steps import STEPS, InstanceStep, Step
from asoba_deploy.core.validate_input import check_ssm_online

SINGLE_RUN_SECONDS = 60  # one run of a document that is sent again (the health check)
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
    budget = spec.budget(config, state)
    parameters = spec.parameters(config, state)
    run_seconds = SINGLE_RUN_SECONDS if spec.resend_while else budget - AGENT_REPORT_MARGIN_SECONDS
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
        if now + config.poll_seconds < ref.deadline:
            return ref.model_copy(update={"status": "Resend"})
        raise step.error(
            f"the runtime did not turn healthy within {waited} s (last status: {status}) on {ref.instance_id}"
        )
    detail = result.get("error") or (result.get("status_body") or {}).get("error") or status
    raise step.error(f"the runtime reports {status} after {waited} s: {detail}")


def run_action(step: Step, event: SendEvent | PollEvent, logger: Logger) -> dict[str, Any]:
    """One `send` or `poll` of `step` with this invocation's settings and SSM client."""
    config = settings()
    ssm = aws.client("ssm")
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
