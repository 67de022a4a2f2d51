"""The project's SSM Command documents, loaded from ssm_documents/*.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from aws_cdk import Stack
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from stacks import paths


def load_document(path: Path) -> dict[str, Any]:
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, dict) or content.get("schemaVersion") != "2.2":
        raise ValueError(f"{path.name}: not an SSM Command document of schemaVersion 2.2")
    return content


class InstanceDocuments(Construct):
    """One AWS::SSM::Document per file; `names` maps file stem -> document name."""

    def __init__(self, scope: Construct, construct_id: str, *, directory: Path | None = None) -> None:
        super().__init__(scope, construct_id)
        directory = directory or paths.DOCUMENTS_DIR
        stack = Stack.of(self)
        self.names: dict[str, str] = {}
        self.arns: list[str] = []
        for path in sorted(directory.glob("*.yaml")):
            stem = path.stem
            name = f"{stack.stack_name}-{stem}"
            ssm.CfnDocument(
                self,
                stem,
                name=name,
                content=load_document(path),
                document_type="Command",
                document_format="YAML",
                update_method="NewVersion",
            )
            self.names[stem] = name
            self.arns.append(stack.format_arn(service="ssm", resource="document", resource_name=name))
