#!/usr/bin/env python3
"""CDK entry point: read and validate context, build the stack, run cdk-nag on every synth."""

from __future__ import annotations

import sys

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from stacks.config import ConfigError, load_config
from stacks.deploy_stack import ModelDeployStack


def build_app(app: cdk.App | None = None) -> tuple[cdk.App, ModelDeployStack]:
    app = app or cdk.App()
    config = load_config(app.node.try_get_context)
    stack = ModelDeployStack(
        app,
        "AsobaModelDeploy",
        config=config,
        env=cdk.Environment(account=config.account, region=config.region),
        description="Resource-aware model deployment orchestrator (Step Functions + SSM)",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack


def main() -> int:
    try:
        app, _ = build_app()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
