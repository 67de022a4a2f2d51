"""Synthesize the real stack and create in moto exactly what `cdk deploy` would.

The synthesized template goes through moto's CloudFormation (assets uploaded first to
the bootstrap bucket, as `cdk deploy` publishes them). moto's CloudFormation puts state
machines in a backend that does not execute, so the machine is registered again through
the Step Functions API with the definition CloudFormation resolved: the same definition
users deploy, never a hand-written copy.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aws_cdk as cdk

from app import build_app
from asoba_deploy.core.steps import STEPS
from stacks.command_events import COMPLETER_HANDLER, COMPLETER_ID

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STACK_NAME = "AsobaModelDeploy"
ACCOUNT = "123456789012"


def default_context() -> dict[str, Any]:
    return dict(json.loads((PROJECT_ROOT / "cdk.json").read_text())["context"])


def nested_machines(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The state machines inside a state: a Parallel's branches, a Map's item processor."""
    return [*state.get("Branches", []), *([state["ItemProcessor"]] if "ItemProcessor" in state else [])]


@dataclass
class Synthesized:
    outdir: Path
    template: dict[str, Any]
    assets: dict[str, Any]

    @property
    def state_machine_definition(self) -> dict[str, Any]:
        """The definition with CloudFormation references left as placeholders (for linting)."""
        for resource in self.template["Resources"].values():
            if resource["Type"] == "AWS::StepFunctions::StateMachine":
                body = resource["Properties"]["DefinitionString"]
                if isinstance(body, dict) and "Fn::Join" in body:
                    sep, parts = body["Fn::Join"]
                    text = sep.join(
                        p
                        if isinstance(p, str)
                        else "arn:aws:lambda:us-west-2:123456789012:function:placeholder"
                        for p in parts
                    )
                    return dict(json.loads(text))
                return dict(json.loads(body))
        raise KeyError("no state machine in the template")


def synthesize(outdir: Path, context: dict[str, Any] | None = None) -> Synthesized:
    merged = default_context()
    merged.update(context or {})
    if outdir.exists():
        shutil.rmtree(outdir)
    app, _ = build_app(cdk.App(outdir=str(outdir), context=merged))
    assembly = app.synth()
    stack = assembly.get_stack_by_name(STACK_NAME)
    template = json.loads((outdir / stack.template_file).read_text())
    assets = json.loads((outdir / f"{STACK_NAME}.assets.json").read_text())
    return Synthesized(outdir=outdir, template=template, assets=assets)


@dataclass
class DeployedStack:
    resources: dict[str, str]  # logical id -> physical id
    state_machine_arn: str
    functions: dict[str, str] = field(default_factory=dict)  # construct id -> function name
    documents: dict[str, str] = field(default_factory=dict)  # stem -> document name
    outputs: dict[str, str] = field(default_factory=dict)

    def physical(self, logical_prefix: str) -> str:
        matches = [pid for lid, pid in self.resources.items() if lid.startswith(logical_prefix)]
        if len(matches) != 1:
            raise KeyError(f"{logical_prefix}: {len(matches)} matches")
        return matches[0]


def _zip_dir(source: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(source).as_posix())


def publish_assets(synth: Synthesized, s3: Any, region: str) -> str:
    bucket = f"cdk-hnb659fds-assets-{ACCOUNT}-{region}"
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    for asset in synth.assets.get("files", {}).values():
        source = synth.outdir / asset["source"]["path"]
        for destination in asset["destinations"].values():
            key = destination["objectKey"]
            if source.is_dir():
                archive = synth.outdir / f"{source.name}.zip"
                if not archive.exists():
                    _zip_dir(source, archive)
                s3.upload_file(str(archive), bucket, key)
            else:
                s3.upload_file(str(source), bucket, key)
    return bucket


def _log_group_arn_as_cloudformation_gives_it() -> None:
    """AWS::Logs::LogGroup's Arn attribute ends in ":*" on AWS ("...:log-group:<name>:*", the
    CloudFormation reference); moto's lacks it, and a policy built from it would then grant less
    here than on AWS (no stream-level match). A moto internal: moto is pinned exactly."""
    from moto.logs.models import LogGroup

    if getattr(LogGroup.get_cfn_attribute, "_aws_arn", False):
        return
    original = LogGroup.get_cfn_attribute

    def get_cfn_attribute(self: LogGroup, attribute_name: str) -> str:
        value = original(self, attribute_name)
        return f"{value}:*" if attribute_name == "Arn" else value

    get_cfn_attribute._aws_arn = True  # type: ignore[attr-defined]
    LogGroup.get_cfn_attribute = get_cfn_attribute  # type: ignore[method-assign]


def deploy(synth: Synthesized, session: Any, region: str) -> DeployedStack:
    _log_group_arn_as_cloudformation_gives_it()
    s3 = session.client("s3")
    ssm = session.client("ssm")
    cfn = session.client("cloudformation")
    publish_assets(synth, s3, region)
    ssm.put_parameter(Name="/cdk-bootstrap/hnb659fds/version", Value="30", Type="String", Overwrite=True)
    cfn.create_stack(
        StackName=STACK_NAME,
        TemplateBody=json.dumps(synth.template),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    deadline = time.monotonic() + 60
    while True:
        status = cfn.describe_stacks(StackName=STACK_NAME)["Stacks"][0]["StackStatus"]
        if status.endswith("_COMPLETE") or status.endswith("_FAILED") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if status != "CREATE_COMPLETE":
        events = cfn.describe_stack_events(StackName=STACK_NAME)["StackEvents"]
        reasons = [e.get("ResourceStatusReason") for e in events if e.get("ResourceStatusReason")]
        raise RuntimeError(f"stack {status}: {reasons[:5]}")
    resources = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.describe_stack_resources(StackName=STACK_NAME)["StackResources"]
        if r.get("PhysicalResourceId")  # types moto's CloudFormation skips (alarms) have none
    }
    machine_arn = _register_state_machine(synth, resources, session, region)
    by_handler = {step.handler: step.function_id for step in STEPS.values() if step.has_function}
    by_handler[COMPLETER_HANDLER] = COMPLETER_ID  # the status-change event completer (no step)
    functions = {}
    for logical_id, resource in synth.template["Resources"].items():
        if resource["Type"] == "AWS::Lambda::Function":
            functions[by_handler[resource["Properties"]["Handler"]]] = resources[logical_id]
    documents = {}
    for resource in synth.template["Resources"].values():
        if resource["Type"] == "AWS::SSM::Document":
            name = resource["Properties"]["Name"]
            documents[name.removeprefix(f"{STACK_NAME}-")] = name
    return DeployedStack(
        resources=resources, state_machine_arn=machine_arn, functions=functions, documents=documents
    )


class _Resolver:
    """Resolves the intrinsic functions CDK puts in a state machine definition."""

    def __init__(self, synth: Synthesized, resources: dict[str, str], session: Any, region: str) -> None:
        self.template = synth.template
        self.resources = resources
        self.session = session
        self.region = region

    def arn(self, logical_id: str) -> str:
        kind = self.template["Resources"][logical_id]["Type"]
        physical = self.resources[logical_id]
        if kind == "AWS::Lambda::Function":
            config = self.session.client("lambda").get_function(FunctionName=physical)["Configuration"]
            return str(config["FunctionArn"])
        if kind == "AWS::IAM::Role":
            return str(self.session.client("iam").get_role(RoleName=physical)["Role"]["Arn"])
        if physical.startswith("arn:"):
            return physical
        raise ValueError(f"cannot resolve the Arn of {logical_id} ({kind})")

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if "Ref" in value:
                pseudo = {
                    "AWS::Region": self.region,
                    "AWS::AccountId": ACCOUNT,
                    "AWS::Partition": "aws",
                    "AWS::URLSuffix": "amazonaws.com",
                }
                return pseudo.get(value["Ref"]) or self.resources[value["Ref"]]
            if "Fn::GetAtt" in value:
                logical_id, attribute = value["Fn::GetAtt"]
                if attribute != "Arn":
                    raise ValueError(f"unsupported attribute {attribute}")
                return self.arn(logical_id)
            if "Fn::Join" in value:
                separator, parts = value["Fn::Join"]
                return separator.join(str(self.resolve(p)) for p in parts)
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


def _register_state_machine(synth: Synthesized, resources: dict[str, str], session: Any, region: str) -> str:
    resolver = _Resolver(synth, resources, session, region)
    sfn = session.client("stepfunctions")
    for resource in synth.template["Resources"].values():
        if resource["Type"] != "AWS::StepFunctions::StateMachine":
            continue
        properties = resource["Properties"]
        definition = resolver.resolve(properties["DefinitionString"])
        json.loads(definition)  # a resolved definition is plain JSON
        return str(
            sfn.create_state_machine(
                name=properties["StateMachineName"],
                definition=definition,
                roleArn=resolver.resolve(properties["RoleArn"]),
                type="STANDARD",
            )["stateMachineArn"]
        )
    raise KeyError("no state machine in the template")
