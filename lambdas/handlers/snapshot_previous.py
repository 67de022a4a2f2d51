"""The previous instance step: send its SSM document, then poll it (see core/steps.py)."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Tracer

from handlers.instance_step import make_handler

logger = Logger()
tracer = Tracer()
handler = make_handler("previous", logger, tracer)
