"""The deployment state machine (DESIGN.md section 3), built from CDK constructs and the
step registry: each phase's steps are chained in registry order.

ValidateInput -> Mode?
  validate: InstanceStopped? -> ReportStopped -> CheckSkipped (an idle-stopped instance)
            | CheckInstance (document) -> ReportCheck -> ObserveActivity (the idle policy)
              -> CheckPassed
  deploy:   AcquireLock -> Deploy [ WakeInstance (start a stopped instance, Wait until running
              and Online: stacks/wake_instance.py) -> <inspect steps> -> Plan -> DryRun? -> Fits?
              -> <backup steps> -> ChangeInstance [ <change steps, each behind "<Label>?" when
              it has run_if; consecutive steps of one `parallel` group as the branches of one
              Parallel state, e.g. Prepare [ Sync | Install ] -> Prepare.Sync -> Prepare.Install
              -> Prepare.Done (the branches' results to $.steps.<key>)> ]
              (failure, in any branch too -> Rollback -> ExplainFailure -> Fail)
              -> Measure? [ Measure [ <measure steps: Benchmark> ] (failure -> Measure.Failed:
              recorded at $.benchmark_failure, the deployment stands) | "benchmark": false ] ]
            -> RecordDeployment -> ReleaseLock -> Deployed (the record; a dry run: the plan)
            (failure anywhere in Deploy -> ReleaseLockAfterFailure -> RecordFailure -> Fail)
          all of it, from AcquireLock on, is the per-instance deployment that the Rollout Map
          runs for each instance (stacks/rollout.py; a single instance_id is a one-item Map)
"""

from __future__ import annotations

from aws_cdk import (
    ArnFormat,
    Duration,
    RemovalPolicy,
    Stack,
)
from aws_cdk import (
    aws_kms as kms,
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
from aws_cdk import (
    aws_stepfunctions_tasks as tasks,
)
from constructs import Construct

from asoba_deploy.core.state import SKIPPED
from asoba_deploy.core.steps import Phase, Step, label_of, phase, the
from stacks.rollout import rollout
from stacks.run_on_instance import RunOnInstance, invoke
from stacks.wake_instance import WakeInstance

DEPLOY_TIMEOUT = Duration.hours(4)


def units(steps: list[Step]) -> list[list[Step]]:
    """The steps in order, consecutive steps of one `parallel` group together: each unit is one
    step, or the steps of one Parallel state. A group is one run of consecutive steps: one that
    comes back after another step would be a second Parallel state of the same name."""
    grouped: list[list[Step]] = []
    for step in steps:
        if grouped and step.parallel is not None and grouped[-1][-1].parallel == step.parallel:
            grouped[-1].append(step)
        else:
            if step.parallel is not None and any(unit[0].parallel == step.parallel for unit in grouped):
                raise ValueError(f"step {step.name}: the steps of group {step.parallel} must be consecutive")
            grouped.append([step])
    return grouped


def branches(steps: list[Step]) -> list[list[Step]]:
    """A parallel group's steps by branch (`Step.branch_name`), in registry order: each branch
    runs its steps one after the other."""
    by_name: dict[str, list[Step]] = {}
    for step in steps:
        by_name.setdefault(step.branch_name, []).append(step)
    return list(by_name.values())


class DeployStateMachine(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        functions: dict[str, lambda_.Function],
        poll_seconds: int,
        state_machine_name: str,
        logs_key: kms.IKey,
    ) -> None:
        super().__init__(scope, construct_id)
        fn = functions
        input_step, lock, plan_step = the(Phase.INPUT), the(Phase.LOCK), the(Phase.PLAN)
        check, undo, record_step = the(Phase.CHECK), the(Phase.UNDO), the(Phase.RECORD)

        def run(step: Step) -> RunOnInstance:
            return RunOnInstance(
                self,
                step.label,
                function=fn[step.name],
                result_key=step.key,
                poll_seconds=poll_seconds,
                comment=step.description,
            )

        def guarded(step: Step, fragment: sfn.IChainable, skip: sfn.State) -> sfn.State:
            """A step with run_if sits behind "<Label>?" and is skipped when its path is absent."""
            assert step.run_if is not None
            return (
                sfn.Choice(self, f"{step.label}?")
                .when(sfn.Condition.is_present(step.run_if), fragment)
                .otherwise(skip)
            )

        def together(group: str, steps: list[Step]) -> sfn.Chain:
            """The group's branches at once (the console graph shows them side by side), each
            its steps in turn; then every step's result at $.steps.<key> as if they had run one
            after the other. A failure in any branch stops the others and fails the Parallel (->
            its Catch)."""
            label = label_of(group)
            scratch = f"$.{group.replace('-', '_')}"
            # Each branch returns the whole state with its own results added: pick each result.
            # A step with run_if sits behind "<Label>?"; skipped, its result is {"skipped": true}
            # (the selector needs the path; core.state reads it as a step that did not run).
            # (States.JsonMerge would merge the branches' $.steps in one go, but moto's evaluates
            # $[1].steps to a list: a Pass per step instead, which both run alike.)
            lanes = branches(steps)
            parallel = sfn.Parallel(
                self,
                label,
                result_selector={
                    f"{step.key}.$": f"$[{i}].steps.{step.key}"
                    for i, lane in enumerate(lanes)
                    for step in lane
                },
                result_path=scratch,
                comment="At once: " + " | ".join(" -> ".join(step.name for step in lane) for lane in lanes),
            )
            for lane in lanes:
                after: sfn.State | None = None  # the first state of the lane's next step
                for step in reversed(lane):
                    fragment = run(step)
                    if after is not None:
                        fragment.next(after)
                    head: sfn.State = fragment.start_state
                    if step.run_if is not None:
                        skipped = sfn.Pass(
                            self,
                            f"{step.label}.Skipped",
                            result=sfn.Result.from_object({SKIPPED: True}),
                            result_path=step.result_path,
                        )
                        if after is not None:
                            skipped.next(after)
                        head = guarded(step, fragment, skipped)
                    after = head
                assert after is not None
                parallel.branch(after)
            chained = sfn.Chain.start(parallel)
            for step in steps:
                chained = chained.next(
                    sfn.Pass(
                        self,
                        f"{label}.{step.label}",
                        input_path=f"{scratch}.{step.key}",
                        result_path=step.result_path,
                    )
                )
            # the picked copies go: the state keeps one copy of each result (256 KiB limit)
            done = sfn.Pass(self, f"{label}.Done", result=sfn.Result.from_object({}), result_path=scratch)
            return chained.next(done)

        def chain(which: Phase) -> sfn.Chain:
            """The phase's steps in registry order (see `units`)."""
            steps = phase(which)
            if not steps:
                raise ValueError(f"the registry has no {which} step")
            start: sfn.State | None = None  # the first state of the steps after this one
            ends: list[sfn.INextable] = []
            last: sfn.IChainable | None = None
            for unit in reversed(units(steps)):
                step = unit[0]
                piece: sfn.Chain | RunOnInstance
                if len(unit) > 1:
                    assert step.parallel is not None
                    piece = together(step.parallel, unit)
                    piece_ends = list(piece.end_states)
                    piece_start = piece.start_state
                else:
                    piece = run(step)
                    piece_ends = list(piece.end_states)
                    piece_start = piece.start_state
                last = last or piece
                if start is None:
                    ends = piece_ends
                else:
                    piece.next(start)
                head: sfn.State = piece_start
                if len(unit) == 1 and step.run_if is not None:
                    skip: sfn.State
                    if start is None:
                        skip = sfn.Pass(self, f"{step.label}.Skipped")
                        ends.append(skip)
                    else:
                        skip = start
                    head = guarded(step, piece, skip)
                start = head
            assert start is not None and last is not None
            return sfn.Chain.custom(start, ends, last)

        validate = invoke(
            self,
            input_step.label,
            fn[input_step.name],
            {
                "input": sfn.JsonPath.entire_payload,
                "execution": sfn.JsonPath.execution_id,
                "execution_name": sfn.JsonPath.execution_name,
                "started_at": sfn.JsonPath.execution_start_time,
            },
            "$",
            comment=input_step.description,
        )

        # --- scheduled instance check -------------------------------------------------------
        check_run = sfn.Parallel(self, f"{check.label}.Run", result_selector={"state.$": "$[0]"}).branch(
            run(check)
        )
        report = invoke(
            self,
            "ReportCheck",
            fn[check.name],
            {"action": "report", "state": sfn.JsonPath.object_at("$.state")},
            "$.report",
            comment="Publish metrics; fail when a check failed",
        )
        report_failure = invoke(
            self,
            "ReportCheckFailure",
            fn[check.name],
            {"action": "report_failure", "state": sfn.JsonPath.entire_payload},
            "$.report",
            comment="Publish the offline metrics, then fail",
        )
        check_run.add_catch(report_failure, errors=["States.ALL"], result_path="$.failure")
        # the request activity and the idle policy (core/idle.py), once the check passed
        idle = invoke(
            self,
            "ObserveActivity",
            fn[check.name],
            {"action": "idle", "state": sfn.JsonPath.object_at("$.state")},
            "$.idle",
            comment="Requests since the last check; stop the instance when the idle policy says so",
        )
        # a stopped instance (the idle policy's doing) is reported as such, not checked
        report_stopped = invoke(
            self,
            "ReportStopped",
            fn[check.name],
            {"action": "stopped", "state": sfn.JsonPath.entire_payload},
            "$.report",
            comment="Publish InstanceStopped (the alarm counts it as passed)",
        )
        stopped = sfn.Condition.or_(
            sfn.Condition.string_equals("$.instance.state", "stopped"),
            sfn.Condition.string_equals("$.instance.state", "stopping"),
        )
        check_chain = (
            sfn.Choice(self, "InstanceStopped?")
            .when(stopped, report_stopped.next(sfn.Succeed(self, "CheckSkipped")))
            .otherwise(check_run.next(report).next(idle).next(sfn.Succeed(self, "CheckPassed")))
        )

        # --- deployment --------------------------------------------------------------------
        def lock_task(label: str, action: str, comment: str | None = None) -> tasks.LambdaInvoke:
            return invoke(
                self,
                label,
                fn[lock.name],
                {"action": action, "state": sfn.JsonPath.entire_payload},
                "$.lock",
                comment=comment,
            )

        def record_task(label: str, outcome: str, comment: str | None = None) -> tasks.LambdaInvoke:
            return invoke(
                self,
                label,
                fn[record_step.name],
                {"action": "record", "outcome": outcome, "state": sfn.JsonPath.entire_payload},
                "$.record",
                comment=comment,
            )

        acquire = lock_task("AcquireLock", "acquire", "At most one deployment per instance")
        inspect = phase(Phase.INSPECT)
        plan = invoke(
            self,
            plan_step.label,
            fn[plan_step.name],
            {
                "request": sfn.JsonPath.object_at("$.request"),
                "snapshot": sfn.JsonPath.object_at(f"{inspect[0].result_path}.result"),
                "instance_id": sfn.JsonPath.string_at("$.instance_id"),
                "execution_name": sfn.JsonPath.string_at("$.execution_name"),
                "started_at": sfn.JsonPath.string_at("$.started_at"),
            },
            "$.plan",
            comment=plan_step.description,
        )
        insufficient = sfn.Fail(
            self,
            plan_step.error.__name__,
            error=plan_step.error.__name__,
            cause_path="$.plan.summary",
        )
        change = sfn.Parallel(
            self,
            "ChangeInstance",
            result_selector={"state.$": "$[0]"},
            output_path="$.state",
            comment="Every step here is undone by Rollback on failure",
        ).branch(sfn.Chain.start(sfn.Pass(self, "BeginChange")).next(chain(Phase.CHANGE)))

        rollback_wrapper = sfn.Parallel(
            self, f"{undo.label}Instance", result_selector={"state.$": "$[0]"}, output_path="$.state"
        ).branch(run(undo))
        explain = invoke(
            self,
            "ExplainFailure",
            fn[undo.name],
            {"action": "explain", "state": sfn.JsonPath.entire_payload},
            "$.failure",
            comment="Say what failed and what was restored",
        )
        rollback_wrapper.add_catch(explain, errors=["States.ALL"], result_path="$.rollback_error")
        rolled_back = sfn.Fail(self, "RolledBack", error_path="$.failure.Error", cause_path="$.failure.Cause")
        rollback_wrapper.next(explain)
        explain.next(rolled_back)
        change.add_catch(rollback_wrapper, errors=["States.ALL"], result_path="$.failure")

        # The benchmark: once the change succeeded, outside its rollback. Its own Catch records a
        # failure at $.benchmark_failure and the deployment goes on to be recorded as it stands.
        measure = sfn.Parallel(
            self,
            "Measure",
            result_selector={"state.$": "$[0]"},
            output_path="$.state",
            comment="A failure here is recorded in the ledger; nothing is rolled back",
        ).branch(chain(Phase.MEASURE))
        measure.add_catch(
            sfn.Pass(self, "Measure.Failed"), errors=["States.ALL"], result_path="$.benchmark_failure"
        )
        skip_benchmark = sfn.Condition.and_(
            sfn.Condition.is_present("$.request.benchmark"),
            sfn.Condition.boolean_equals("$.request.benchmark", False),
        )
        change.next(
            sfn.Choice(self, "Measure?")
            .when(skip_benchmark, sfn.Pass(self, "Measure.Skipped", comment='"benchmark": false'))
            .otherwise(measure)
        )

        dry_run_done = sfn.Pass(self, "DryRunComplete")
        fits = (
            sfn.Choice(self, "Fits?")
            .when(sfn.Condition.boolean_equals("$.plan.fits", False), insufficient)
            .otherwise(chain(Phase.BACKUP).next(change))
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
        ).branch(
            # a stopped instance is started and awaited first (stacks/wake_instance.py)
            WakeInstance(self, the(Phase.WAKE), function=fn[the(Phase.WAKE).name])
            .next(chain(Phase.INSPECT))
            .next(plan)
            .next(dry_run)
        )

        release_after_failure = lock_task("ReleaseLockAfterFailure", "release")
        record_failure = record_task("RecordFailure", "failed")
        failed = sfn.Fail(
            self, "DeploymentFailed", error_path="$.failure.Error", cause_path="$.failure.Cause"
        )
        deploy.add_catch(release_after_failure, errors=["States.ALL"], result_path="$.failure")
        release_after_failure.next(record_failure).next(failed)

        record = record_task(
            "RecordDeployment", "succeeded", "Write the ledger record; the execution output carries it"
        )
        release = lock_task("ReleaseLock", "release")
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
        # the one per-instance deployment, run by the Rollout Map for each instance (one or a fleet)
        per_instance = acquire.next(deploy).next(record).next(release).next(finish)
        # rollback_on_failure: an instance the failed rollout left on the new model, put back
        undo_run = sfn.Parallel(
            self, "UndoDeployment.Run", result_path=sfn.JsonPath.DISCARD, comment=undo.description
        ).branch(
            RunOnInstance(
                self,
                "UndoDeployment",
                function=fn[undo.name],
                result_key=undo.key,
                poll_seconds=poll_seconds,
                comment="Put back what ran before this execution (rollback_on_failure)",
            )
        )
        undo_run.add_catch(
            lock_task("ReleaseUndoLockAfterFailure", "release").next(
                sfn.Fail(
                    self, "UndoFailed", error_path="$.undo_failure.Error", cause_path="$.undo_failure.Cause"
                )
            ),
            errors=["States.ALL"],
            result_path="$.undo_failure",
        )
        undo_chain = (
            lock_task("AcquireUndoLock", "acquire", "The instance's lock again, for its rollback")
            .next(undo_run)
            .next(lock_task("ReleaseUndoLock", "release"))
        )
        deploy_chain = rollout(self, per_instance, fn[the(Phase.ROLLOUT).name], undo=undo_chain)

        definition = validate.next(
            sfn.Choice(self, "Mode?")
            .when(sfn.Condition.string_equals("$.request.mode", "validate"), check_chain)
            .otherwise(deploy_chain)
        )

        # Under /aws/vendedlogs/: log delivery is then allowed by one wildcard statement, not one
        # per group in the account's 5,120-character CloudWatch Logs resource policy.
        self.log_group = logs.LogGroup(
            self,
            "ExecutionLogs",
            log_group_name=f"/aws/vendedlogs/states/{state_machine_name}",
            retention=logs.RetentionDays.THREE_MONTHS,
            encryption_key=logs_key,
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
