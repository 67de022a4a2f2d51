"""The rollout: one Map runs the per-instance deployment for each instance (issue 16).

Rollout (Map over $.targets, at most $.rollout.max_concurrency at a time) [
    OneOfAFleet? -- fleet --> AdmitInstance -> Admitted? -- no --> NotStarted (its row)
        |                                          | yes
        +-- single ------------------------------> Instance [ the per-instance deployment ]
    Instance -> InstanceRow? -- fleet --> InstanceSucceeded (its row) / single --> InstanceResult
    (Instance failed) -> FailedInFleet? -- fleet --> CountFailure (its row)
                                        -- single --> InstanceFailed (the original error)
] -> Fleet? -- single --> Done (the one item's output: today's record, or the plan)
            -- fleet --> SummarizeRollout -> RolloutSucceeded? -> RolloutComplete | RolloutFailed
                 rollback_on_failure: RollBackRollout (Map over the rows) [ UndoNeeded? -- succeeded -->
                     UndoInstance [ AcquireUndoLock -> UndoDeployment (the rollback document)
                     -> ReleaseUndoLock ] -> InstanceRolledBack | otherwise KeepRow ]
                 -> SummarizeRollBack -> RolloutFailed

The per-instance deployment is built once, by the caller, and passed in: a single `instance_id`
is a one-item rollout through the same states. An inline Map fails as a whole on its first failed
iteration, so each iteration catches its instance's failure and counts it; AdmitInstance refuses
to start an instance once the failures have passed the tolerance (core/rollout.py).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from asoba_deploy.core.errors import RolloutFailed
from stacks.run_on_instance import invoke

FLEET = "$.rollout.fleet"

# What each iteration starts from: the execution's state, for one of its instances.
ITEM_STATE = {
    "request.$": "$.request",
    "instance_id.$": "$$.Map.Item.Value.instance_id",
    "instance.$": "$$.Map.Item.Value.instance",
    "model_source.$": "$.model_source",
    "execution.$": "$.execution",
    "execution_name.$": "$.execution_name",
    "started_at.$": "$.started_at",
    "rollout.$": "$.rollout",
}


# What each iteration of the rollback starts from: one row of the failed rollout's table.
UNDO_STATE = {
    "row.$": "$$.Map.Item.Value",
    "instance_id.$": "$$.Map.Item.Value.instance_id",
    "request.$": "$.request",
    "model_source.$": "$.model_source",
    "execution.$": "$.execution",
    "execution_name.$": "$.execution_name",
    "started_at.$": "$.started_at",
    "rollout.$": "$.rollout",
}


def rollout(
    scope: Construct, per_instance: sfn.IChainable, function: lambda_.IFunction, *, undo: sfn.IChainable
) -> sfn.Chain:
    """The Map around `per_instance` (the one per-instance deployment) and what follows it; `undo`
    puts one instance back as it was before this execution (rollback_on_failure)."""

    def call(label: str, payload: dict[str, object], result_path: str, comment: str) -> sfn.TaskStateBase:
        return invoke(scope, label, function, {**payload}, result_path, comment=comment)

    instance = sfn.Parallel(
        scope,
        "Instance",
        result_selector={"value.$": "$[0]"},
        result_path="$.outcome",
        comment="The per-instance deployment (the same states for one instance or a fleet)",
    ).branch(per_instance)

    counted = call(
        "CountFailure",
        {
            "action": "failed",
            "execution": sfn.JsonPath.string_at("$.execution"),
            "instance_id": sfn.JsonPath.string_at("$.instance_id"),
            "started_at": sfn.JsonPath.string_at("$.started_at"),
            "failure": sfn.JsonPath.object_at("$.failure"),
        },
        "$",
        "Count the failure (instances not yet started see it); the row names it",
    )
    reraised = sfn.Fail(scope, "InstanceFailed", error_path="$.failure.Error", cause_path="$.failure.Cause")
    instance.add_catch(
        sfn.Choice(scope, "FailedInFleet?")
        .when(sfn.Condition.boolean_equals(FLEET, True), counted)
        # one instance: the execution fails with the step's own error, as it always has
        .otherwise(reraised),
        errors=["States.ALL"],
        result_path="$.failure",
    )
    succeeded = call(
        "InstanceSucceeded",
        {
            "action": "done",
            "instance_id": sfn.JsonPath.string_at("$.instance_id"),
            "dry_run": sfn.JsonPath.string_at("$.request.dry_run"),
            "value": sfn.JsonPath.object_at("$.outcome.value"),
        },
        "$",
        "The instance's row of the rollout table",
    )
    instance.next(
        sfn.Choice(scope, "InstanceRow?")
        .when(sfn.Condition.boolean_equals(FLEET, True), succeeded)
        .otherwise(sfn.Pass(scope, "InstanceResult", output_path="$.outcome.value"))
    )

    admit = call(
        "AdmitInstance",
        {
            "action": "admit",
            "execution": sfn.JsonPath.string_at("$.execution"),
            "instance_id": sfn.JsonPath.string_at("$.instance_id"),
            "rollout": sfn.JsonPath.object_at("$.rollout"),
        },
        "$.admission",
        "Start this instance only while the failures so far are within the tolerance",
    )
    admit.next(
        sfn.Choice(scope, "Admitted?")
        .when(sfn.Condition.boolean_equals("$.admission.go", True), instance)
        .otherwise(sfn.Pass(scope, "NotStarted", output_path="$.admission.row"))
    )
    iteration = sfn.Choice(scope, "OneOfAFleet?").when(sfn.Condition.boolean_equals(FLEET, True), admit)
    iteration.otherwise(instance)

    each = sfn.Map(
        scope,
        "Rollout",
        items_path="$.targets",
        item_selector=ITEM_STATE,
        max_concurrency_path="$.rollout.max_concurrency",
        result_path="$.results",
        comment="The deployment on each instance, at most max_concurrency at a time",
    ).item_processor(iteration)

    summarize = call(
        "SummarizeRollout",
        {
            "action": "summarize",
            "dry_run": sfn.JsonPath.string_at("$.request.dry_run"),
            "rollout": sfn.JsonPath.object_at("$.rollout"),
            "rows": sfn.JsonPath.list_at("$.results"),
        },
        "$.summary",
        "The table: one row per instance; failed when the failures passed the tolerance",
    )
    failed = sfn.Fail(scope, "RolloutFailed", error=RolloutFailed.__name__, cause_path="$.summary.cause")
    summarize.next(
        sfn.Choice(scope, "RolloutSucceeded?")
        .when(
            sfn.Condition.string_equals("$.summary.outcome", "succeeded"),
            sfn.Succeed(scope, "RolloutComplete", output_path="$.summary"),
        )
        .when(
            sfn.Condition.boolean_equals("$.rollout.rollback_on_failure", True),
            roll_back(scope, undo, call)
            .next(
                call(
                    "SummarizeRollBack",
                    {
                        "action": "summarize",
                        "dry_run": sfn.JsonPath.string_at("$.request.dry_run"),
                        "rollout": sfn.JsonPath.object_at("$.rollout"),
                        "rows": sfn.JsonPath.list_at("$.summary.rows"),
                    },
                    "$.summary",
                    "The table again, the instances put back marked rolled-back",
                )
            )
            .next(failed),
        )
        .otherwise(failed)
    )
    return sfn.Chain.start(each).next(
        sfn.Choice(scope, "Fleet?")
        .when(sfn.Condition.boolean_equals(FLEET, True), summarize)
        # a Pass, not a Succeed: the one instance's own end (Deployed, PlanReady) stays the last
        # end state the history, the console and the CLI show
        .otherwise(sfn.Pass(scope, "Done", output_path="$.results[0]"))
    )


def roll_back(scope: Construct, undo: sfn.IChainable, call: Any) -> sfn.Map:
    """rollback_on_failure: each instance the failed rollout left on the new model is put back
    (its lock, the rollback document, the ledger's `rolled-back` record); the others keep their rows."""
    undo_instance = sfn.Parallel(
        scope, "UndoInstance", result_path=sfn.JsonPath.DISCARD, comment="Put this instance back"
    ).branch(undo)
    row: dict[str, object] = {"action": "undone", "execution": sfn.JsonPath.string_at("$.execution")}
    row |= {"model": sfn.JsonPath.string_at("$.request.model"), "row": sfn.JsonPath.object_at("$.row")}
    undo_instance.next(call("InstanceRolledBack", row, "$", "Its row: rolled-back; its ledger record"))
    undo_instance.add_catch(
        call(
            "InstanceNotRolledBack",
            {**row, "failure": sfn.JsonPath.object_at("$.undo_failure")},
            "$",
            "Its row: rollback-failed, with the error",
        ),
        errors=["States.ALL"],
        result_path="$.undo_failure",
    )
    each = sfn.Choice(scope, "UndoNeeded?").when(
        sfn.Condition.string_equals("$.row.outcome", "succeeded"), undo_instance
    )
    each.otherwise(sfn.Pass(scope, "KeepRow", output_path="$.row"))
    return sfn.Map(
        scope,
        "RollBackRollout",
        items_path="$.summary.rows",
        item_selector=UNDO_STATE,
        max_concurrency_path="$.rollout.max_concurrency",
        result_path="$.summary.rows",
        comment="rollback_on_failure: the instances already done are put back too",
    ).item_processor(each)
