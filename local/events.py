"""EventBridge delivery to Lambda targets for the local cloud.

moto's events backend matches a put event against its rules, but `Rule.send_to_targets`
raises NotImplementedError for a Lambda ARN. `install()` delivers those here, as EventBridge
does: asynchronously (a thread per delivery, the function run by the in-process Lambda runner),
and only when the function's resource-based policy lets events.amazonaws.com invoke it for that
rule (AWS refuses the invoke otherwise; the event is then lost, counted in `FAILED`).

Test hooks: `drop(predicate)` loses the matching events before delivery (EventBridge and SSM
deliver best effort: the safety net must cover a lost one); `DELIVERED` and `FAILED` record
what happened; `wait_idle` waits until every delivery started has finished.
This is a moto internal: moto is pinned exactly.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from moto.awslambda.models import lambda_backends
from moto.events.models import Rule
from moto.utilities.utils import get_partition

from local import iam

log = logging.getLogger(__name__)

EVENTS_PRINCIPAL = "events.amazonaws.com"
_original_send_to_targets = Rule.send_to_targets
_lock = threading.Lock()
_drops: list[Callable[[dict[str, Any]], bool]] = []
_in_flight = 0


@dataclass(frozen=True)
class Delivery:
    rule_arn: str
    function_arn: str
    event: dict[str, Any]
    outcome: str  # "invoked", "errored" (the function raised), "refused" (resource policy), "dropped"
    detail: str = ""


DELIVERED: deque[Delivery] = deque(maxlen=2000)
FAILED: deque[Delivery] = deque(maxlen=2000)


@contextlib.contextmanager
def drop(predicate: Callable[[dict[str, Any]], bool]) -> Iterator[list[dict[str, Any]]]:
    """Lose every event `predicate` matches while inside; yields the list of the lost ones."""
    lost: list[dict[str, Any]] = []

    def _match(event: dict[str, Any]) -> bool:
        if predicate(event):
            lost.append(event)
            return True
        return False

    with _lock:
        _drops.append(_match)
    try:
        yield lost
    finally:
        with _lock:
            _drops.remove(_match)


def _dropped(event: dict[str, Any]) -> bool:
    with _lock:
        drops = list(_drops)
    return any(match(event) for match in drops)


def _statement_allows(statement: dict[str, Any], function_arn: str, rule_arn: str, account: str) -> bool:
    """One statement of a function policy, judged for EventBridge invoking it for `rule_arn`."""
    if statement.get("Effect", "Allow") != "Allow":
        return False
    principal = statement.get("Principal")
    services = principal.get("Service") if isinstance(principal, dict) else principal
    if EVENTS_PRINCIPAL not in (services if isinstance(services, list) else [services]):
        return False
    actions = statement.get("Action")
    if not any(
        iam._matches_any(action, "lambda:InvokeFunction", ignore_case=True)
        for action in (actions if isinstance(actions, list) else [actions])
    ):
        return False
    resource = str(statement.get("Resource") or function_arn)
    if not (
        iam._matches_any(resource, function_arn) or iam._matches_any(resource, f"{function_arn}:$LATEST")
    ):
        return False
    # condition keys lowercased, as iam.py looks them up
    context = {"aws:sourcearn": [rule_arn], "aws:sourceaccount": [account]}
    source_arn = statement.get("SourceArn")  # the AddPermission / AWS::Lambda::Permission spelling
    if source_arn is not None and not iam._arn_like(str(source_arn), rule_arn):
        return False
    for operator, pairs in (statement.get("Condition") or {}).items():
        for key, wanted in pairs.items():
            if not iam._condition_holds(operator, key, wanted, context):
                return False
    return True


def allowed(function: Any, rule_arn: str) -> bool:
    """Does the function's resource policy let EventBridge invoke it for this rule?"""
    statements = function.policy.statements if function.policy is not None else []
    account = rule_arn.split(":")[4]
    return any(_statement_allows(s, function.function_arn, rule_arn, account) for s in statements)


def _deliver(rule: Rule, function_arn: str, event: dict[str, Any]) -> None:
    global _in_flight
    try:
        backend = lambda_backends[rule.account_id][rule.region_name]
        try:
            function = backend.get_function(function_arn)
        except Exception as error:  # the target's function is gone: EventBridge fails the invoke
            FAILED.append(Delivery(rule.arn, function_arn, event, "refused", f"no function: {error}"))
            return
        if not allowed(function, rule.arn):
            reason = f"{function_arn}'s resource policy does not allow {EVENTS_PRINCIPAL} for {rule.arn}"
            log.warning("EventBridge delivery refused: %s", reason)
            FAILED.append(Delivery(rule.arn, function_arn, event, "refused", reason))
            return
        from local import lambda_runner

        payload, errored, _ = lambda_runner.invoke_in_process(function, event)
        delivery = Delivery(rule.arn, function_arn, event, "errored" if errored else "invoked", payload)
        (FAILED if errored else DELIVERED).append(delivery)
    finally:
        with _lock:
            _in_flight -= 1


def _send_to_targets(self: Rule, original_event: Any, transform_input: bool = True) -> None:
    global _in_flight
    # a schedule-only rule (no pattern) matches no event on AWS; moto's empty pattern matches all
    if self.state != "ENABLED" or not self.event_pattern.get_pattern():
        return
    if not self.event_pattern.matches_event(original_event):
        return
    partition = get_partition(self.region_name)
    lambdas = [t for t in self.targets if str(t["Arn"]).startswith(f"arn:{partition}:lambda:")]
    others = [t for t in self.targets if t not in lambdas]
    if others:
        rest = copy.copy(self)
        rest.targets = others
        _original_send_to_targets(rest, original_event, transform_input)
    for target in lambdas:
        event = copy.deepcopy(original_event)
        if "Input" in target:
            event = json.loads(target["Input"])
        if _dropped(event):
            FAILED.append(Delivery(self.arn, str(target["Arn"]), event, "dropped"))
            continue
        with _lock:
            _in_flight += 1
        threading.Thread(
            target=_deliver, args=(self, str(target["Arn"]), event), daemon=True, name="eventbridge-delivery"
        ).start()


def wait_idle(timeout: float = 30) -> None:
    """Until every delivery started has ended (tests that assert on DELIVERED/FAILED)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _lock:
            if _in_flight == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"EventBridge deliveries still running after {timeout} s")


def install() -> None:
    Rule.send_to_targets = _send_to_targets  # type: ignore[method-assign,assignment]


def uninstall() -> None:
    Rule.send_to_targets = _original_send_to_targets  # type: ignore[method-assign]
