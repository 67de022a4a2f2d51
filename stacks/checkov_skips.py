"""checkov acknowledgements: `Metadata.checkov.skip` on a resource, each with its reason.

checkov runs on the synthesized template (tests/stack/test_checkov.py); like the cdk-nag
acknowledgements, a skip names the check and says why it does not apply.
"""

from __future__ import annotations

from aws_cdk import CfnResource
from constructs import IConstruct


def skip_checks(construct: IConstruct, reasons: dict[str, str]) -> None:
    """Skip checkov's `reasons` keys (check ids) on the construct's CloudFormation resource."""
    resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
    if not isinstance(resource, CfnResource):
        raise TypeError(f"{construct.node.path} has no CloudFormation resource to annotate")
    if not all(reason.strip() for reason in reasons.values()):
        raise ValueError("every checkov skip needs a reason")
    existing = resource.get_metadata("checkov") or {}
    skips = [s for s in existing.get("skip", []) if s["id"] not in reasons]
    skips += [{"id": check, "comment": reason} for check, reason in sorted(reasons.items())]
    resource.add_metadata("checkov", {"skip": skips})
