"""The whole product running locally: one function brings it up for the tests and for `make demo`.

    env = LocalEnvironment.start(workdir)   # moto + Lambdas in process + sandbox + the real stack
    env.upload_model("tiny-llama", folder)
    ... start executions on env.stack.state_machine_arn, or run the deploy-model CLI against
    env.cloud.endpoint ...
    env.stop()

The pieces are also exposed one by one (``start_cloud``, ``launch_instance``, ...) because the
session fixtures of tests/conftest.py build them one at a time: a test that needs only the local
cloud does not pay for a sandbox or a synth.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# moto, the CDK and the sandbox load on first use: tests/conftest.py imports this module for
# every test, and unit tests should not pay for them.
if TYPE_CHECKING:
    from local.cloud import LocalCloud
    from local.sandbox.sandbox import Sandbox
    from local.stack import DeployedStack

MODEL_BUCKET = "asoba-llm-cache"
FLUX_UNIT = "flux-api.service"


@dataclass
class Ports:
    flux: int  # the seed's 8000: Flux, and what a replacing runtime takes over
    coexist: int  # the seed's 8001: a runtime beside Flux


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:port now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def preferred_port(wanted: int | None, taken: set[int] | None = None) -> int:
    """``wanted`` when it is free (and not in ``taken``), else a free port the OS picks."""
    taken = taken or set()
    if wanted is not None and wanted not in taken and port_is_free(wanted):
        return wanted
    while True:
        port = free_port()
        if port not in taken:
            return port


def start_cloud(port: int | None = None, *, enforce_iam: bool = True) -> LocalCloud:
    """moto's server on 127.0.0.1 executing state machines, Lambdas run in process, each
    Lambda's calls authorized against its own role (``enforce_iam``, local/iam.py)."""
    from local.cloud import LocalCloud

    return LocalCloud(port=port, enforce_iam=enforce_iam).start()


def launch_instance(cloud: LocalCloud, instance_type: str = "g5.4xlarge") -> str:
    """A running EC2 instance in moto: the one the sandbox plays."""
    ec2 = cloud.client("ec2")
    reservation = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType=instance_type
    )
    return str(reservation["Instances"][0]["InstanceId"])


def model_bucket(cloud: LocalCloud, name: str = MODEL_BUCKET) -> str:
    from local.bucket import ensure_bucket

    ensure_bucket(cloud.client("s3"), name, cloud.region)
    return name


# The local cloud's "link": what one GET from the moto server on loopback moves per second.
LINK_PROBE_BYTES = 32 << 20


def measure_link_gbps(cloud: LocalCloud, bucket: str) -> float:
    """The local S3's rate in Gbps, measured as an operator knows their instance's link: a 32 MiB
    object put into ``bucket`` (under a key outside any model prefix), read back twice (the
    faster read counts), removed. Goes into the stack's `link_gbps`, which the plan's
    time_to_healthy (and its stream-or-disk choice) reads."""
    s3 = cloud.client("s3")
    key = "asoba-link-probe/probe.bin"
    s3.put_object(Bucket=bucket, Key=key, Body=os.urandom(LINK_PROBE_BYTES))
    try:
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            body = s3.get_object(Bucket=bucket, Key=key)["Body"]
            while body.read(1 << 20):
                pass
            best = min(best, time.perf_counter() - started)
    finally:
        s3.delete_object(Bucket=bucket, Key=key)
    return round(min(400.0, max(0.01, LINK_PROBE_BYTES * 8 / best / 1e9)), 3)


def start_sandbox(
    root: Path, cloud: LocalCloud, instance_id: str, flux_port: int, *, base_python: str | Path | None = None
) -> Sandbox:
    """The instance: an A10G-like sandbox with (fake) Flux running on ``flux_port``; its BasePython
    is ``base_python`` when given (default: this venv's interpreter)."""
    from local.sandbox.sandbox import Sandbox

    box = Sandbox(root, instance_id, gpu=True, endpoint_url=cloud.endpoint, base_python=base_python)
    try:
        box.install_fake_flux(flux_port)
    except BaseException:
        box.close()
        raise
    return box


def stack_context(instance_id: str, bucket: str, sandbox: Sandbox, ports: Ports) -> dict[str, Any]:
    """CDK context for the sandbox: its roots, its interpreter and user, the ports, 1 s polls."""
    return {
        "instance_ids": [instance_id],
        "model_bucket": bucket,
        "poll_interval_seconds": 1,
        # a step whose SSM event is lost ends within one such round (seconds here, minutes on AWS)
        "safety_net_seconds": 5,
        # an instance step's own cost here, for the plan's estimate (snapshot-previous and
        # start-service: 0.2-0.9 s measured on the local cloud, make demo)
        "step_overhead_seconds": 0.3,
        "thresholds": {"coexist_port": ports.coexist, "replace_port": ports.flux},
        "instance_roots": {
            "models_root": str(sandbox.models_root),
            "runtime_root": str(sandbox.runtime_root),
            "unit_dir": str(sandbox.unit_dir),
            "env_dir": str(sandbox.env_dir),
            "profile_dir": str(sandbox.profile_dir),
            "state_dir": str(sandbox.state_dir),
        },
        "base_python": sandbox.base_python,
        "service_user": sandbox.service_user,
    }


def deploy_stack(
    cloud: LocalCloud,
    context: dict[str, Any],
    cdk_out: Path,
    template_edit: Callable[[dict[str, Any]], None] | None = None,
    sandbox: Sandbox | None = None,
) -> DeployedStack:
    """Synthesize the real stack (cdk-nag included) and create it in moto as `cdk deploy` would.

    ``template_edit`` changes the synthesized template in place before it is deployed (tests
    that prove a missing grant fails). With ``sandbox``, the instance's role gets the stack's
    instance policy, as its README asks of an operator (``attach_instance_role``).
    """
    from local.stack import STACK_NAME, deploy, synthesize

    synth = synthesize(cdk_out, context)
    if template_edit is not None:
        template_edit(synth.template)
    stack = deploy(synth, cloud, cloud.region)
    outputs = cloud.client("cloudformation").describe_stacks(StackName=STACK_NAME)["Stacks"][0]
    stack.outputs = {o["OutputKey"]: str(o["OutputValue"]) for o in outputs.get("Outputs", [])}
    if sandbox is not None:
        attach_instance_role(cloud, sandbox, stack.outputs["InstancePolicyArn"])
    return stack


def attach_instance_role(cloud: LocalCloud, sandbox: Sandbox, policy_arn: str) -> str:
    """The instance profile's role, with the stack's instance policy attached and nothing else:
    what the agent's own calls (downloads, command output) are authorized as from then on."""
    import json

    from botocore.exceptions import ClientError

    iam = cloud.client("iam")
    name = f"gpu-instance-{sandbox.instance_id}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
    try:
        arn = str(iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])
    except ClientError as error:
        if error.response["Error"]["Code"] != "EntityAlreadyExists":
            raise
        arn = str(iam.get_role(RoleName=name)["Role"]["Arn"])
    for attached in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
        iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])
    iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)
    sandbox.instance_role_arn = arn
    from local.iam_http import register_instance_key

    register_instance_key(sandbox.access_key_id, arn, sandbox.instance_id)  # what the scripts sign with
    return arn


@dataclass
class LocalEnvironment:
    cloud: LocalCloud
    instance_id: str
    bucket: str
    ports: Ports
    sandbox: Sandbox
    context: dict[str, Any]
    stack: DeployedStack
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        cloud_port: int | None = None,
        flux_port: int | None = None,
        coexist_port: int | None = None,
        template_edit: Callable[[dict[str, Any]], None] | None = None,
        base_python: str | Path | None = None,
        extra_context: dict[str, Any] | None = None,
    ) -> LocalEnvironment:
        """Bring everything up under ``workdir`` (the sandbox's root and cdk.out go there).

        Ports are used as given when free, else replaced by free ones (``ports`` says which).
        ``base_python``: the instance's BasePython (the interpreter install builds the runtime venv
        over; default this venv's). ``extra_context``: CDK context keys added to (and replacing) the
        sandbox's own, e.g. ``{"step_budgets": {...}}``.
        """
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        started = time.monotonic()
        cloud_port = preferred_port(cloud_port)
        flux = preferred_port(flux_port, {cloud_port})
        ports = Ports(flux=flux, coexist=preferred_port(coexist_port, {cloud_port, flux}))
        cloud = start_cloud(cloud_port)
        sandbox: Sandbox | None = None
        try:
            instance_id = launch_instance(cloud)
            bucket = model_bucket(cloud)
            timings["cloud"] = time.monotonic() - started
            sandbox = start_sandbox(
                workdir / "instance", cloud, instance_id, ports.flux, base_python=base_python
            )
            timings["sandbox"] = time.monotonic() - started - timings["cloud"]
            context = stack_context(instance_id, bucket, sandbox, ports) | {
                "link_gbps": measure_link_gbps(cloud, bucket)
            }
            context |= extra_context or {}
            timings["link"] = time.monotonic() - started - timings["cloud"] - timings["sandbox"]
            mark = time.monotonic()
            stack = deploy_stack(cloud, context, workdir / "cdk.out", template_edit, sandbox)
            timings["stack"] = time.monotonic() - mark
        except BaseException:
            if sandbox is not None:
                sandbox.close()
            cloud.stop()
            raise
        return cls(
            cloud=cloud,
            instance_id=instance_id,
            bucket=bucket,
            ports=ports,
            sandbox=sandbox,
            context=context,
            stack=stack,
            timings=timings,
        )

    @property
    def endpoint(self) -> str:
        return self.cloud.endpoint

    @property
    def region(self) -> str:
        return self.cloud.region

    def upload_model(self, name: str, folder: Path) -> list[str]:
        """Every file of ``folder`` but hidden ones (a cache's markers) under s3://bucket/<name>/."""
        from local.bucket import upload_model

        return upload_model(self.cloud.client("s3"), self.bucket, name, folder)

    def stop(self) -> None:
        """Kill every process of the sandbox (Flux, the runtime), then stop the local cloud."""
        try:
            self.sandbox.close()
        finally:
            self.cloud.stop()
