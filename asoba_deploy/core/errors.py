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


class RecordFailed(DeployError):
    """The ledger record could not be written."""


class CommandFailed(DeployError):
    """An SSM command ended Failed, Cancelled or TimedOut: the base of each instance step's error."""


# One error per instance step, named <StepLabel>Failed (asoba_deploy.core.steps checks it).
class CollectResourcesFailed(CommandFailed):
    """The instance's resources could not be read."""


class SnapshotPreviousFailed(CommandFailed):
    """What runs now could not be recorded and backed up."""


class StopFluxFailed(CommandFailed):
    """The co-resident service could not be stopped or its GPU memory was not released."""


class EvictFailed(CommandFailed):
    """A resident model's unit could not be stopped or its GPU memory was not released."""


class SwitchFailed(CommandFailed):
    """The stable endpoint could not be moved to the new model (the switch put the old one back)."""


class SyncFailed(CommandFailed):
    """The model could not be synced from S3 to the instance."""


class InstallFailed(CommandFailed):
    """The runtime could not be installed."""


class StartServiceFailed(CommandFailed):
    """The service could not be started, or the model's sync never completed for it."""


class HealthCheckFailed(CommandFailed):
    """The deployed service never reported healthy within its budget."""


class RollbackFailed(CommandFailed):
    """The previous service and Flux could not be restored."""


class CheckInstanceFailed(CommandFailed):
    """The scheduled instance check found a failing check."""


class UndeployFailed(CommandFailed):
    """The deployed runtime could not be removed."""


class BenchmarkFailed(CommandFailed):
    """The benchmark could not measure the deployed model (recorded; the deployment stands)."""


class RolloutFailed(DeployError):
    """A fleet rollout's failures passed its tolerance: the instances not yet started were not."""
