"""The CloudWatch metrics the functions publish (Powertools Metrics) and the dashboard and alarms
read: namespace, dimensions and names, written down once here."""

from __future__ import annotations

NAMESPACE = "AsobaModelDeploy"

# The dimensions of every metric here: Powertools' `service` (the emitting function's id, from
# POWERTOOLS_SERVICE_NAME) and the instance.
SERVICE = "service"
INSTANCE = "instance_id"

# The scheduled check (CheckInstance)
VALIDATION_PASSED = "ValidationPassed"
INSTANCE_STOPPED = "InstanceStopped"
INSTANCE_HOURLY_PRICE_USD = "InstanceHourlyPriceUsd"
REQUESTS_SERVED = "RequestsServed"
IDLE_SECONDS = "IdleSeconds"
INSTANCE_ONLINE = "InstanceOnline"
IDLE_STOPS = "IdleStops"  # 1 when the idle policy stopped the instance (core/idle.py)

# Deployments (Record)
DEPLOYMENT_SUCCEEDED = "DeploymentSucceeded"
DEPLOYMENT_FAILED = "DeploymentFailed"
DEPLOYMENT_SECONDS = "DeploymentSeconds"
TIME_TO_HEALTHY_SECONDS = "TimeToHealthySeconds"

# The benchmark after a deployment (core.benchmark), published by Record: concurrency 1
BENCHMARK_DECODE_TOKENS_PER_SECOND = "BenchmarkDecodeTokensPerSecond"  # Count/Second
BENCHMARK_TTFT_SECONDS = "BenchmarkTimeToFirstToken"  # Seconds
