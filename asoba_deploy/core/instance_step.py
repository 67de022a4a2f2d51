"""Send and poll one instance step (the two actions of every instance-step Lambda)."""

from __future__ import annotations

from typing import Any

from asoba_deploy.core import commands
from asoba_deploy.core.checks import check_ssm_online
from asoba_deploy.core.commands import CommandRef
from asoba_deploy.core.settings import Settings
from asoba_deploy.core.steps import StepSpec

SINGLE_RUN_SECONDS = 60  # one run of a document that is sent again (the health check)


def send_step(
    spec: StepSpec, config: Settings, ssm: Any, state: dict[str, Any], now: float
) -> dict[str, Any]:
    previous = None
    command = state.get("command")
    if isinstance(command, dict) and command.get("step") == spec.key and command.get("status") == "Resend":
        previous = CommandRef.model_validate(command)
    if spec.require_online:
        check_ssm_online(ssm, state["instance_id"])
    budget = spec.budget(config, state)
    parameters = spec.parameters(config, state)
    parameters["executionTimeout"] = str(SINGLE_RUN_SECONDS if spec.resend_while else budget)
    ref = commands.send(
        ssm,
        step=spec.key,
        document=config.document(spec.document),
        instance_id=state["instance_id"],
        parameters=parameters,
        timeout_seconds=budget,
        now=now,
        log_group=config.command_log_group,
        comment=f"{spec.key} {state.get('execution_name') or ''}",
        previous=previous,
    )
    ref = ref.model_copy(update={"execution_name": state.get("execution_name")})
    if spec.expect is not None:
        ref = ref.model_copy(update={"expect": spec.expect(config, state)})
    return ref.model_dump(mode="json")


def poll_step(
    spec: StepSpec, config: Settings, ssm: Any, command: dict[str, Any], now: float
) -> dict[str, Any]:
    ref = commands.poll(ssm, CommandRef.model_validate(command), now=now, error=spec.error)
    if ref.status == "Success" and spec.check is not None and ref.expect is not None:
        spec.check(ref.result or {}, ref.expect)
    if ref.status != "Success" or not spec.resend_while:
        return ref.model_dump(mode="json")
    result = ref.result or {}
    status = str(result.get("status", "unknown"))
    if status == "healthy":
        return ref.model_dump(mode="json")
    waited = int(now - ref.first_sent_at)
    if status in spec.resend_while:
        if now + config.poll_seconds < ref.deadline:
            return ref.model_dump(mode="json") | {"status": "Resend"}
        raise spec.error(
            f"the runtime did not turn healthy within {waited} s (last status: {status}) on {ref.instance_id}"
        )
    detail = result.get("error") or (result.get("status_body") or {}).get("error") or status
    raise spec.error(f"the runtime reports {status} after {waited} s: {detail}")
