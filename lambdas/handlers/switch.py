"""The switch step: send its SSM document, then poll it (asoba_deploy.core.steps)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Tracer

from asoba_deploy.core.instance_step import instance_step_handler

logger = Logger()
tracer = Tracer()
handler = instance_step_handler("switch", logger, tracer)
