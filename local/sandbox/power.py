"""Stopping and starting a sandbox's EC2 instance, as EC2 and the instance do it.

moto's StopInstances and StartInstances only flip the state name (to "stopped" and "running" at
once) and nothing on the instance notices. ``install()`` wraps them so that, for an instance a
``Sandbox`` plays:

* StopInstances answers "stopping" and powers the instance off: every unit's processes die (the
  services are down), the SSM agent with them, so DescribeInstanceInformation says ConnectionLost
  and new commands stay Pending (local/sandbox/agent.py); ``shutdown_s`` later the state is
  "stopped". StartInstances on a stopping instance is refused with IncorrectInstanceState, as
  EC2 refuses it.
* StartInstances answers "pending"; ``boot_s`` later the state is "running" and systemd starts
  the units that are enabled (their ``WantedBy`` links: Flux, the runtime that start-service
  enabled), so resident models come back by their units' own restart; ``agent_start_s`` after
  that the SSM agent is Online again.

What the real services report: a stopped instance's agent stops sending heartbeats and SSM
shows its PingStatus as ConnectionLost (DescribeInstanceInformation keeps listing it); commands
sent meanwhile wait for delivery until their timeout (DeliveryTimedOut). A started instance is
"pending" first, "running" once it boots, and Online once its agent has started and registered.
The delays here are the sandbox's (seconds, configurable per sandbox), not AWS's (tens of
seconds to minutes): the wake loop's budget and poll interval come from configuration.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models.instances import InstanceBackend

if TYPE_CHECKING:
    from local.sandbox.sandbox import Sandbox

# EC2's state codes (InstanceState.Code)
PENDING, RUNNING, STOPPING, STOPPED = (0, "pending"), (16, "running"), (64, "stopping"), (80, "stopped")

_lock = threading.RLock()
_installed = False
_original_stop = InstanceBackend.stop_instances
_original_start = InstanceBackend.start_instances


class IncorrectInstanceState(EC2ClientError):
    def __init__(self, instance_id: str, state: str) -> None:
        super().__init__(
            "IncorrectInstanceState",
            f"The instance '{instance_id}' is not in a state from which it can be started.",
        )


def _sandbox(instance_id: str) -> Sandbox | None:
    from local.sandbox import agent

    return agent.sandbox_for(instance_id)


def _set_state(instance: Any, state: tuple[int, str]) -> None:
    instance._state.code, instance._state.name = state


def _later(delay_s: float, then: Any) -> None:
    def run() -> None:
        time.sleep(max(0.0, delay_s))
        then()

    threading.Thread(target=run, daemon=True, name="sandbox-power").start()


def _stop_instances(self: InstanceBackend, instance_ids: list[str]) -> list[tuple[Any, Any]]:
    stopped = _original_stop(self, instance_ids)
    for instance, _previous in stopped:
        sandbox = _sandbox(instance.id)
        if sandbox is None:
            continue
        _set_state(instance, STOPPING)
        sandbox.power_off()
        generation = sandbox.power_generation

        def settle(
            instance: Any = instance, sandbox: Sandbox = sandbox, generation: int = generation
        ) -> None:
            with _lock:
                if sandbox.power_generation == generation:
                    _set_state(instance, STOPPED)

        _later(sandbox.shutdown_s, settle)
    return stopped


def _start_instances(self: InstanceBackend, instance_ids: list[str]) -> list[tuple[Any, Any]]:
    for instance in self.get_multi_instances_by_id(instance_ids):
        if _sandbox(instance.id) is not None and instance._state.name == STOPPING[1]:
            raise IncorrectInstanceState(instance.id, instance._state.name)
    started = _original_start(self, instance_ids)
    for instance, previous in started:
        sandbox = _sandbox(instance.id)
        if sandbox is None or previous.name == RUNNING[1]:
            continue
        _set_state(instance, PENDING)
        with _lock:
            sandbox.power_generation += 1
            generation = sandbox.power_generation

        def boot(instance: Any = instance, sandbox: Sandbox = sandbox, generation: int = generation) -> None:
            with _lock:
                if sandbox.power_generation != generation:
                    return
                _set_state(instance, RUNNING)
            sandbox.boot()

        _later(sandbox.boot_s, boot)
    return started


def install() -> None:
    """Patch moto's EC2 StopInstances/StartInstances once per process (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        backend: Any = InstanceBackend
        backend.stop_instances = _stop_instances
        backend.start_instances = _start_instances
        _installed = True
