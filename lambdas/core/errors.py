"""Typed errors of the deployment contract.

Step Functions matches Retry/Catch on the exception class name, so the class names
below are the execution's error names users see in the console.
"""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error the orchestrator raises on purpose."""


class InvalidInput(DeployError):
    """The execution input (or a step's input) does not satisfy the contract."""


class ModelNotFound(DeployError):
    """The model is not in the bucket, or lacks config/weights."""


class InstanceUnavailable(DeployError):
    """The instance does not exist, is not running, or is not online in SSM."""


class DeploymentInProgress(DeployError):
    """Another execution holds the instance's deployment lock."""


class InsufficientResources(DeployError):
    """The plan does not fit the instance."""


class StopFailed(DeployError):
    """A service could not be stopped or its GPU memory was not released."""


class SyncFailed(DeployError):
    """The model could not be synced from S3 to the instance."""


class InstallFailed(DeployError):
    """The runtime could not be installed or started."""


class HealthCheckFailed(DeployError):
    """The deployed service never reported healthy within its budget."""


class CommandFailed(DeployError):
    """An SSM command ended Failed, Cancelled or TimedOut (generic form)."""


class ValidationFailed(DeployError):
    """The scheduled validation found a failing check."""

