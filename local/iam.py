"""IAM for the local cloud: every AWS call a Lambda makes is authorized against its own role.

moto's own enforcement (`INITIAL_NO_AUTH_ACTION_COUNT`) cannot judge this stack: outside S3,
SQS, IAM and STS it checks every action against the resource "*", so a grant on a table, an
instance, a document or an execution never matches; and it evaluates conditions without the
request's values, so a conditioned Allow (ListBucket on `s3:prefix`) turns into a Deny. It also
authenticates every request, so the harness, the sandbox and the Step Functions interpreter
would all need credentials of their own.

So the local cloud evaluates policies itself, client side: `install()` wraps botocore's
`BaseClient._make_api_call`; a call made while a thread acts as a role (`acting_as`, set by the
Lambda runner around the handler) is turned into the IAM request AWS would evaluate (action,
resource ARNs, condition keys) and judged against the role's identity policies as deployed in
moto's IAM backend (inline and attached). A denied call raises the ClientError the service
answers (AccessDenied, AccessDeniedException, UnauthorizedOperation); anything else (the
harness, the sandbox, moto itself) keeps full rights. Also enforced: S3 answers 403, not 404,
for a missing key to a principal without s3:ListBucket on the bucket.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import ClientError

ACCOUNT = "123456789012"

_local = threading.local()
_original_make_api_call = BaseClient._make_api_call
_installed = False

# The latest authorizations made (principal ARN, check, decision): what a failing test reads.
TRACE: deque[tuple[str, Check, Decision]] = deque(maxlen=5000)


class Decision(Enum):
    ALLOW = "allow"
    IMPLICIT_DENY = "implicit"  # no statement allows
    EXPLICIT_DENY = "explicit"  # a Deny statement matches


class UnsupportedPolicy(ValueError):
    """A policy uses something this evaluator cannot judge (it fails loudly, never guesses)."""


@dataclass(frozen=True)
class Check:
    """One authorization AWS makes for a call: an action on a resource with condition keys."""

    action: str
    resource: str
    context: Mapping[str, list[str]] = field(default_factory=dict)


# --- policy evaluation ---------------------------------------------------------------------


def _glob(pattern: str, *, ignore_case: bool = False) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("^" + "".join(parts) + "$", re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _matches_any(patterns: Any, value: str, *, ignore_case: bool = False) -> bool:
    values = patterns if isinstance(patterns, list) else [patterns]
    return any(_glob(str(p), ignore_case=ignore_case).match(value) for p in values)


def _arn_like(pattern: str, value: str) -> bool:
    # ArnLike compares the six colon-separated parts one by one (the last one keeps its colons)
    wanted, actual = pattern.split(":", 5), value.split(":", 5)
    if len(wanted) != 6 or len(actual) != 6:
        return False
    return all(_glob(w).match(a) for w, a in zip(wanted, actual, strict=True))


def _numeric(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


_NEGATED = {
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringNotLike",
    "ArnNotEquals",
    "ArnNotLike",
    "NumericNotEquals",
}


def _value_matches(operator: str, wanted: str, actual: str) -> bool:
    base = operator.removeprefix("String").removeprefix("Arn").removeprefix("Numeric")
    if operator.startswith("String"):
        if base in ("Equals", "NotEquals"):
            return wanted == actual
        if base in ("EqualsIgnoreCase", "NotEqualsIgnoreCase"):
            return wanted.lower() == actual.lower()
        if base in ("Like", "NotLike"):
            return bool(_glob(wanted).match(actual))
    if operator.startswith("Arn") and base in ("Equals", "NotEquals", "Like", "NotLike"):
        return _arn_like(wanted, actual)
    if operator.startswith("Numeric"):
        a, w = _numeric(actual), _numeric(wanted)
        if a is None or w is None:
            return False
        comparisons: dict[str, Callable[[float, float], bool]] = {
            "Equals": lambda x, y: x == y,
            "NotEquals": lambda x, y: x == y,
            "LessThan": lambda x, y: x < y,
            "LessThanEquals": lambda x, y: x <= y,
            "GreaterThan": lambda x, y: x > y,
            "GreaterThanEquals": lambda x, y: x >= y,
        }
        if base in comparisons:
            return comparisons[base](a, w)
    if operator == "Bool":
        return wanted.lower() == actual.lower()
    raise UnsupportedPolicy(f"condition operator {operator} is not evaluated by the local cloud")


def _condition_holds(operator: str, key: str, wanted: Any, context: Mapping[str, list[str]]) -> bool:
    wanted_values = [
        str(v).lower() if isinstance(v, bool) else str(v)
        for v in (wanted if isinstance(wanted, list) else [wanted])
    ]
    qualifier, _, op = operator.rpartition(":")
    if_exists = op.endswith("IfExists")
    op = op.removesuffix("IfExists")
    actual = context.get(key.lower())
    if op == "Null":  # "true": the key must be absent
        return (actual is None) == (wanted_values[0].lower() == "true")
    negated = op in _NEGATED
    if actual is None:
        # a missing key fails a condition, but satisfies a negated one, IfExists and ForAllValues
        return if_exists or negated or qualifier == "ForAllValues"

    def one(value: str) -> bool:
        hit = any(_value_matches(op, w, value) for w in wanted_values)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return all(one(v) for v in actual)
    if qualifier in ("ForAnyValue", ""):
        return any(one(v) for v in actual)
    raise UnsupportedPolicy(f"condition qualifier {qualifier} is not evaluated by the local cloud")


def _covers(statement: Mapping[str, Any], element: str, value: str, *, ignore_case: bool = False) -> bool:
    """Whether Action/Resource (or their Not- forms) covers the value."""
    if element in statement:
        return _matches_any(statement[element], value, ignore_case=ignore_case)
    if f"Not{element}" in statement:
        return not _matches_any(statement[f"Not{element}"], value, ignore_case=ignore_case)
    return False


def _statement_applies(statement: Mapping[str, Any], check: Check) -> bool:
    if not _covers(statement, "Action", check.action, ignore_case=True):
        return False
    if not _covers(statement, "Resource", check.resource):
        return False
    if "Principal" in statement or "NotPrincipal" in statement:
        raise UnsupportedPolicy("an identity policy with a Principal element")
    for operator, keys in (statement.get("Condition") or {}).items():
        for key, wanted in keys.items():
            if not _condition_holds(operator, key, wanted, check.context):
                return False
    return True


def evaluate(documents: list[Mapping[str, Any]], check: Check) -> Decision:
    """Identity-policy evaluation: an explicit Deny wins, else any Allow, else implicit deny."""
    allowed = False
    for document in documents:
        statements = document.get("Statement", [])
        for statement in statements if isinstance(statements, list) else [statements]:
            if not _statement_applies(statement, check):
                continue
            if statement.get("Effect") == "Deny":
                return Decision.EXPLICIT_DENY
            if statement.get("Effect") == "Allow":
                allowed = True
    return Decision.ALLOW if allowed else Decision.IMPLICIT_DENY


# --- the IAM request of a call ----------------------------------------------------------------


def _s3_checks(operation: str, params: Mapping[str, Any], region: str, account: str) -> list[Check] | None:
    bucket = str(params.get("Bucket", ""))
    key = params.get("Key")
    bucket_arn = f"arn:aws:s3:::{bucket}"
    object_arn = f"{bucket_arn}/{key}"
    if operation in ("GetObject", "HeadObject"):
        action = "s3:GetObjectVersion" if params.get("VersionId") else "s3:GetObject"
        return [Check(action, object_arn)]
    if operation in ("ListObjects", "ListObjectsV2"):
        context = {
            f"s3:{name}": [str(params[param])]
            for name, param in (("prefix", "Prefix"), ("delimiter", "Delimiter"), ("max-keys", "MaxKeys"))
            if param in params
        }
        return [Check("s3:ListBucket", bucket_arn, context)]
    if operation == "HeadBucket":
        return [Check("s3:ListBucket", bucket_arn)]
    if operation == "ListObjectVersions":
        return [Check("s3:ListBucketVersions", bucket_arn)]
    if operation in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):
        return [Check("s3:PutObject", object_arn)]
    if operation == "DeleteObject":
        return [Check("s3:DeleteObject", object_arn)]
    if operation == "ListBuckets":
        return [Check("s3:ListAllMyBuckets", "*")]
    if operation == "GetBucketLocation":
        return [Check("s3:GetBucketLocation", bucket_arn)]
    return None


def _dynamodb_checks(
    operation: str, params: Mapping[str, Any], region: str, account: str
) -> list[Check] | None:
    def table(name: str) -> str:
        return name if name.startswith("arn:") else f"arn:aws:dynamodb:{region}:{account}:table/{name}"

    action = f"dynamodb:{operation}"
    if operation in ("BatchGetItem", "BatchWriteItem"):
        return [Check(action, table(name)) for name in params.get("RequestItems", {})]
    if operation == "TransactWriteItems":
        inner = {"Put": "PutItem", "Update": "UpdateItem", "Delete": "DeleteItem"}
        inner["ConditionCheck"] = "ConditionCheckItem"
        return [
            Check(f"dynamodb:{inner[kind]}", table(body["TableName"]))
            for item in params.get("TransactItems", [])
            for kind, body in item.items()
        ]
    if operation == "TransactGetItems":
        items = params.get("TransactItems", [])
        return [Check("dynamodb:GetItem", table(i["Get"]["TableName"])) for i in items]
    if "TableName" in params:
        arn = table(str(params["TableName"]))
        if params.get("IndexName"):
            arn += f"/index/{params['IndexName']}"
        return [Check(action, arn)]
    if operation in ("ListTables", "DescribeLimits", "DescribeEndpoints"):
        return [Check(action, "*")]
    return None


def _ssm_checks(operation: str, params: Mapping[str, Any], region: str, account: str) -> list[Check] | None:
    if operation == "SendCommand":
        if params.get("Targets"):
            return None  # targets by tag authorize per matched instance: not modelled
        document = str(params.get("DocumentName", ""))
        if not document.startswith("arn:"):
            owner = "" if document.startswith(("AWS-", "AWSSupport-", "AmazonCloudWatch-")) else account
            document = f"arn:aws:ssm:{region}:{owner}:document/{document}"
        checks = [
            Check("ssm:SendCommand", f"arn:aws:ec2:{region}:{account}:instance/{instance}")
            for instance in params.get("InstanceIds", [])
        ]
        checks.append(Check("ssm:SendCommand", document))
        if params.get("ServiceRoleArn"):
            checks.append(Check("iam:PassRole", str(params["ServiceRoleArn"])))
        return checks
    if operation in ("GetParameter", "GetParameters", "GetParametersByPath", "PutParameter"):
        names = params.get("Names") or [params.get("Name") or params.get("Path", "")]
        return [
            Check(f"ssm:{operation}", f"arn:aws:ssm:{region}:{account}:parameter/{str(n).lstrip('/')}")
            for n in names
        ]
    if operation in (
        "CancelCommand",
        "GetCommandInvocation",
        "ListCommands",
        "ListCommandInvocations",
        "DescribeInstanceInformation",
    ):
        return [Check(f"ssm:{operation}", "*")]
    if operation in ("DescribeDocument", "GetDocument"):
        arn = f"arn:aws:ssm:{region}:{account}:document/{params.get('Name', '')}"
        return [Check(f"ssm:{operation}", arn)]
    return None


def _states_checks(
    operation: str, params: Mapping[str, Any], region: str, account: str
) -> list[Check] | None:
    for param in ("executionArn", "stateMachineArn", "activityArn", "mapRunArn"):
        if param in params:
            return [Check(f"states:{operation}", str(params[param]))]
    if operation in ("ListStateMachines", "ListActivities", "SendTaskSuccess", "SendTaskFailure"):
        return [Check(f"states:{operation}", "*")]
    if operation == "SendTaskHeartbeat":
        return [Check(f"states:{operation}", "*")]
    return None


def _logs_checks(operation: str, params: Mapping[str, Any], region: str, account: str) -> list[Check] | None:
    group = params.get("logGroupName")
    if group is None:
        # DescribeLogGroups names no group: it is authorized on the account's log-group:* ARN
        any_group = f"arn:aws:logs:{region}:{account}:log-group:*"
        return [Check(f"logs:{operation}", any_group)] if operation.startswith("Describe") else None
    arn = f"arn:aws:logs:{region}:{account}:log-group:{group}"
    stream = params.get("logStreamName")
    return [Check(f"logs:{operation}", f"{arn}:log-stream:{stream}" if stream else f"{arn}:*")]


def _lambda_checks(
    operation: str, params: Mapping[str, Any], region: str, account: str
) -> list[Check] | None:
    name = params.get("FunctionName")
    if name is None:
        return None
    arn = name if str(name).startswith("arn:") else f"arn:aws:lambda:{region}:{account}:function:{name}"
    action = "lambda:InvokeFunction" if operation == "Invoke" else f"lambda:{operation}"
    return [Check(action, str(arn))]


def _ec2_checks(operation: str, params: Mapping[str, Any], region: str, account: str) -> list[Check] | None:
    """Start/Stop name their instances: authorized on each instance's ARN (Describe* takes "*")."""
    if operation not in ("StartInstances", "StopInstances"):
        return None
    return [
        Check(f"ec2:{operation}", f"arn:aws:ec2:{region}:{account}:instance/{instance}")
        for instance in params.get("InstanceIds") or []
    ]


_ALL_RESOURCES_PREFIXES = {"ec2": ("Describe",), "sts": ("GetCallerIdentity",), "xray": ("Put",)}

_SERVICES: dict[str, Callable[[str, Mapping[str, Any], str, str], list[Check] | None]] = {
    "s3": _s3_checks,
    "dynamodb": _dynamodb_checks,
    "ssm": _ssm_checks,
    "states": _states_checks,
    "logs": _logs_checks,
    "lambda": _lambda_checks,
    "ec2": _ec2_checks,
}


def checks_for(
    prefix: str, operation: str, params: Mapping[str, Any], region: str, account: str = ACCOUNT
) -> tuple[list[Check], bool]:
    """The authorizations AWS makes for one call, and whether they are modelled here (False:
    the action checked against "*" only, which a grant on named resources does not cover)."""
    mapper = _SERVICES.get(prefix)
    checks = mapper(operation, params, region, account) if mapper else None
    if checks is not None:
        return checks, True
    if operation.startswith(_ALL_RESOURCES_PREFIXES.get(prefix, ())):
        return [Check(f"{prefix}:{operation}", "*")], True
    return [Check(f"{prefix}:{operation}", "*")], False


# --- principals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    role_arn: str
    session_name: str

    @property
    def role_name(self) -> str:
        return self.role_arn.rsplit("/", 1)[-1]

    @property
    def account(self) -> str:
        parts = self.role_arn.split(":")
        return parts[4] if len(parts) > 4 and parts[4] else ACCOUNT

    @property
    def arn(self) -> str:
        return f"arn:aws:sts::{self.account}:assumed-role/{self.role_name}/{self.session_name}"

    def policies(self) -> list[Mapping[str, Any]]:
        """The role's identity policies as deployed now (inline and attached), from moto's IAM."""
        from moto.iam.models import iam_backends

        backend = iam_backends[self.account]["aws"]
        try:
            role = backend.get_role(self.role_name)
        except Exception:  # no such role: on AWS the function could not assume it
            return []
        documents: list[Any] = list(role.policies.values())
        for policy in role.managed_policies.values():
            documents.extend(v.document for v in policy.versions if v.is_default)
        return [json.loads(d) if isinstance(d, str) else dict(d) for d in documents]

    def context(self, region: str) -> dict[str, list[str]]:
        return {
            "aws:principalarn": [self.role_arn],
            "aws:principalaccount": [self.account],
            "aws:principaltype": ["AssumedRole"],
            "aws:requestedregion": [region],
            "aws:securetransport": ["true"],  # clients reach AWS over TLS; the local endpoint is http
        }

    def decide(self, check: Check, region: str) -> Decision:
        context = self.context(region) | {k.lower(): v for k, v in check.context.items()}
        decision = evaluate(self.policies(), Check(check.action, check.resource, context))
        TRACE.append((self.arn, check, decision))
        return decision


def current_principal() -> Principal | None:
    return getattr(_local, "principal", None)


@contextlib.contextmanager
def acting_as(role_arn: str, session_name: str) -> Iterator[Principal]:
    """Calls this thread makes meanwhile are authorized as the role (a Lambda's handler)."""
    previous = current_principal()
    principal = Principal(role_arn, session_name)
    _local.principal = principal
    try:
        yield principal
    finally:
        _local.principal = previous


@contextlib.contextmanager
def full_rights() -> Iterator[None]:
    previous = current_principal()
    _local.principal = None
    try:
        yield
    finally:
        _local.principal = previous


# --- the client hook --------------------------------------------------------------------------


def _denied(client: BaseClient, operation: str, message: str, *, head: bool = False) -> ClientError:
    model = client.meta.service_model
    protocol = model.protocol
    prefix = model.signing_name
    if prefix == "s3":
        code, status = ("403", 403) if head else ("AccessDenied", 403)
        message = "Forbidden" if head else message
    elif prefix == "ec2":
        code, status = "UnauthorizedOperation", 403
        message = f"You are not authorized to perform this operation. {message}"
    elif protocol == "query":
        code, status = "AccessDenied", 403
    else:
        code, status = "AccessDeniedException", 403 if prefix == "lambda" else 400
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "RequestId": str(uuid.uuid4())},
    }
    error_class = client.exceptions.from_code(code)
    return error_class(response, operation)  # type: ignore[no-any-return]


def _message(principal: Principal, check: Check, decision: Decision, mapped: bool) -> str:
    on = "" if check.resource == "*" else f" on resource: {check.resource}"
    why = (
        "with an explicit deny in an identity-based policy"
        if decision is Decision.EXPLICIT_DENY
        else f"because no identity-based policy allows the {check.action} action"
    )
    note = "" if mapped else " (local.iam: this operation's resources are not modelled, checked as *)"
    return f"User: {principal.arn} is not authorized to perform: {check.action}{on} {why}{note}"


def _authorized_call(client: BaseClient, operation: str, params: dict[str, Any]) -> Any:
    principal = current_principal()
    if principal is None:
        return _original_make_api_call(client, operation, params)
    model = client.meta.service_model
    region = client.meta.region_name or "us-west-2"
    checks, mapped = checks_for(model.signing_name, operation, params, region, principal.account)
    head = operation == "HeadObject"
    for check in checks:
        decision = principal.decide(check, region)
        if decision is not Decision.ALLOW:
            raise _denied(client, operation, _message(principal, check, decision, mapped), head=head)
    try:
        return _original_make_api_call(client, operation, params)
    except ClientError as error:
        if model.signing_name == "s3" and operation in ("GetObject", "HeadObject"):
            code = error.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                # without s3:ListBucket on the bucket S3 will not say whether the key exists
                listing = Check("s3:ListBucket", f"arn:aws:s3:::{params.get('Bucket', '')}")
                if principal.decide(listing, region) is not Decision.ALLOW:
                    raise _denied(client, operation, "Access Denied", head=head) from None
        raise


def _lambda_integration() -> Any:
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    return lambda_eval_utils


_original_lambda_integration = _lambda_integration().execute_lambda_function_integration


def _lambda_task_as_machine_role(
    env: Any, parameters: dict[str, Any], region: str, state_credentials: Any
) -> Any:
    """A Task state's Lambda invoke, made by Step Functions with the state machine's role (its
    lambda:InvokeFunction grant), as on AWS. A moto internal: moto is pinned exactly."""
    role = str(getattr(env.aws_execution_details, "role_arn", "") or "")
    if not role:
        return _original_lambda_integration(env, parameters, region, state_credentials)
    with acting_as(role, "states"):
        return _original_lambda_integration(env, parameters, region, state_credentials)


def install() -> None:
    """Authorize calls made while acting as a role (idempotent): Lambdas' and the state
    machine's own Lambda invokes."""
    global _installed

    def _make_api_call(self: BaseClient, operation_name: str, api_params: dict[str, Any]) -> Any:
        return _authorized_call(self, operation_name, api_params)

    BaseClient._make_api_call = _make_api_call  # type: ignore[method-assign]
    _lambda_integration().execute_lambda_function_integration = _lambda_task_as_machine_role
    _installed = True


def uninstall() -> None:
    global _installed
    BaseClient._make_api_call = _original_make_api_call  # type: ignore[method-assign]
    _lambda_integration().execute_lambda_function_integration = _original_lambda_integration
    _installed = False


def enforcing() -> bool:
    return _installed
