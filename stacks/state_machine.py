"""The deployment state machine (DESIGN.md section 3), built from CDK constructs.

Validate -> Mode?
  validate: ValidateInstance (document) -> ReportValidation -> ValidationPassed
  deploy:   AcquireLock -> Deploy [ CollectResources -> Plan -> DryRun? -> Fits?
              -> SnapshotPrevious -> ChangeInstance [ StopFlux? -> SyncModel -> Install
              -> HealthCheck ]  (failure -> Rollback -> ExplainFailure -> Fail) ]
            -> RecordDeployment -> ReleaseLock -> Done (the record; a dry run: the plan)
            (failure anywhere in Deploy -> ReleaseLockAfterFailure -> RecordFailure -> Fail)
"""

from __future__ import annotations

from aws_cdk import (
    ArnFormat,
    Duration,
    RemovalPolicy,
    Stack,
)
from aws_cdk import (
    aws_lambda as lambda_,
)
from aws_cdk import (
    aws_logs as logs,
)
from aws_cdk import (
    aws_stepfunctions as sfn,
)
from constructs import Construct

from stacks.run_on_instance import RunOnInstance, invoke

DEPLOY_TIMEOUT = Duration.hours(4)


class DeployStateMachine(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: dict[str, lambda_.Function],
        poll_seconds: int,
        state_machine_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        fn = functions

        def run(label: str, key: str, comment: str) -> RunOnInstance:
            return RunOnInstance(
                self, label, function=fn[label], result_key=key, poll_seconds=poll_seconds, comment=comment
            )

        validate = invoke(
            self,
            "Validate",
            fn["Validate"],
            {
                "input": sfn.JsonPath.entire_payload,
                "execution": sfn.JsonPath.execution_id,
                "execution_name": sfn.JsonPath.execution_name,
                "started_at": sfn.JsonPath.execution_start_time,
            },
            "$",
            comment="Parse the input; check the model is in the bucket and the instance runs",
        )

        # --- scheduled validation -------------------------------------------------------
        check_instance = run("Validation", "validation", "Run the validate document")
        validation_run = sfn.Parallel(self, "ValidateInstance", result_selector={"state.$": "$[0]"}).branch(
            check_instance
        )
        report = invoke(
            self,
            "ReportValidation",
            fn["Validation"],
            {"action": "report", "state": sfn.JsonPath.object_at("$.state")},
            "$.report",
            comment="Publish metrics; fail when a check failed",
        )
        report_failure = invoke(
            self,
            "ReportValidationFailure",
            fn["Validation"],
            {"action": "report_failure", "state": sfn.JsonPath.entire_payload},
            "$.report",
            comment="Publish the offline metrics, then fail",
        )
        validation_run.add_catch(report_failure, errors=["States.ALL"], result_path="$.failure")
        validation_chain = validation_run.next(report).next(sfn.Succeed(self, "ValidationPassed"))

        # --- deployment --------------------------------------------------------------------
        acquire = invoke(
            self,
            "AcquireLock",
            fn["Lock"],
            {"action": "acquire", "state": sfn.JsonPath.entire_payload},
            "$.lock",
            comment="At most one deployment per instance",
        )
        collect = run("CollectResources", "collect", "Snapshot RAM, GPU, services, disk, cache")
        plan = invoke(
            self,
            "Plan",
            fn["Plan"],
            {
                "request": sfn.JsonPath.object_at("$.request"),
                "snapshot": sfn.JsonPath.object_at("$.steps.collect.result"),
                "instance_id": sfn.JsonPath.string_at("$.instance_id"),
                "execution_name": sfn.JsonPath.string_at("$.execution_name"),
            },
            "$.plan",
            comment="Decide coexist/replace, quantization, memory; this is the dry run",
        )
        insufficient = sfn.Fail(
            self,
            "InsufficientResources",
            error="InsufficientResources",
            cause_path="$.plan.summary",
        )
        snapshot = run("SnapshotPrevious", "previous", "Record what runs now; back up unit and env")
        stop_flux = run("StopFlux", "stop", "Stop Flux and wait until its GPU memory is free")
        sync = run("SyncModel", "sync", "s5cmd sync of the model folder")
        install = run("Install", "install", "Install the runtime, write env and unit, start it")
        health = run("HealthCheck", "health", "Poll /status and /health until healthy")
        change_steps = (
            sfn.Choice(self, "StopFlux?")
            .when(sfn.Condition.is_present("$.plan.stop_services[0]"), stop_flux.next(sync))
            .otherwise(sync)
            .afterwards()
        )
        change_steps.next(install).next(health)
        change = sfn.Parallel(
            self,
            "ChangeInstance",
            result_selector={"state.$": "$[0]"},
            output_path="$.state",
            comment="Every step here is undone by Rollback on failure",
        ).branch(sfn.Chain.start(sfn.Pass(self, "BeginChange")).next(change_steps))

        rollback = run("Rollback", "rollback", "Restore the previous service and restart Flux")
        rollback_wrapper = sfn.Parallel(
            self, "RollbackInstance", result_selector={"state.$": "$[0]"}, output_path="$.state"
        ).branch(rollback)
        explain = invoke(
            self,
            "ExplainFailure",
            fn["Rollback"],
            {"action": "explain", "state": sfn.JsonPath.entire_payload},
            "$.failure",
            comment="Say what failed and what was restored",
        )
        rollback_wrapper.add_catch(explain, errors=["States.ALL"], result_path="$.rollback_error")
        rolled_back = sfn.Fail(self, "RolledBack", error_path="$.failure.Error", cause_path="$.failure.Cause")
        rollback_wrapper.next(explain)
        explain.next(rolled_back)
        change.add_catch(rollback_wrapper, errors=["States.ALL"], result_path="$.failure")

        dry_run_done = sfn.Pass(self, "DryRunComplete")
        fits = (
            sfn.Choice(self, "Fits?")
            .when(sfn.Condition.boolean_equals("$.plan.fits", False), insufficient)
            .otherwise(snapshot.next(change))
        )
        dry_run = (
            sfn.Choice(self, "DryRun?")
            .when(sfn.Condition.boolean_equals("$.request.dry_run", True), dry_run_done)
            .otherwise(fits)
        )
        deploy = sfn.Parallel(
            self,
            "Deploy",
            result_selector={"state.$": "$[0]"},
            output_path="$.state",
            comment="Any failure in here releases the lock and is recorded",
        ).branch(collect.next(plan).next(dry_run))

        release_after_failure = invoke(
            self,
            "ReleaseLockAfterFailure",
            fn["Lock"],
            {"action": "release", "state": sfn.JsonPath.entire_payload},
            "$.lock",
        )
        record_failure = invoke(
            self,
            "RecordFailure",
            fn["Ledger"],
            {"action": "record", "outcome": "failed", "state": sfn.JsonPath.entire_payload},
            "$.record",
        )
        failed = sfn.Fail(
            self, "DeploymentFailed", error_path="$.failure.Error", cause_path="$.failure.Cause"
        )
        deploy.add_catch(release_after_failure, errors=["States.ALL"], result_path="$.failure")
        release_after_failure.next(record_failure).next(failed)

        record = invoke(
            self,
            "RecordDeployment",
            fn["Ledger"],
            {"action": "record", "outcome": "succeeded", "state": sfn.JsonPath.entire_payload},
            "$.record",
            comment="Write the ledger record; the execution output carries it",
        )
        release = invoke(
            self,
            "ReleaseLock",
            fn["Lock"],
            {"action": "release", "state": sfn.JsonPath.entire_payload},
            "$.lock",
        )
        finish = (
            sfn.Choice(self, "Finished")
            .when(
                sfn.Condition.boolean_equals("$.request.dry_run", True),
                sfn.Succeed(
                    self, "PlanReady", output_path="$.plan", comment="Dry run: the output is the plan"
                ),
            )
            .otherwise(sfn.Succeed(self, "Deployed", output_path="$.record"))
        )
        deploy_chain = acquire.next(deploy).next(record).next(release).next(finish)

        definition = validate.next(
            sfn.Choice(self, "Mode?")
            .when(sfn.Condition.string_equals("$.request.mode", "validate"), validation_chain)
            .otherwise(deploy_chain)
        )

        self.log_group = logs.LogGroup(
            self,
            "ExecutionLogs",
            retention=logs.RetentionDays.THREE_MONTHS,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.state_machine = sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=state_machine_name,
            definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=DEPLOY_TIMEOUT,
            tracing_enabled=True,
            logs=sfn.LogOptions(
                destination=self.log_group, level=sfn.LogLevel.ALL, include_execution_data=True
            ),
        )
        self.state_machine_name = state_machine_name
        self.execution_arn_pattern = Stack.of(self).format_arn(
            service="states",
            resource="execution",
            resource_name=f"{state_machine_name}:*",
            arn_format=ArnFormat.COLON_RESOURCE_NAME,
        )
