"""deploy-model: plan, deploy, validate and undeploy models through the deployed stack.

    deploy-model <model> [--dry-run] [--force-quantize] [--no-follow] [--keep-others [--evict lru]]
                 [--zero-downtime | --strategy auto|stop-start|blue-green]
    deploy-model status | history | validate | undeploy [<model> | --all] [--restore-flux]
    deploy-model bench [<model>] | cost [--since 7d]
    deploy-model start [--instance-id i-...]

Exit codes: 0 success; 1 the deployment (or command) failed; 2 bad input; 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from asoba_deploy.cli import commands, fleet, measure, power
from asoba_deploy.cli.stack import DEFAULT_STACK, Aws, CliError, endpoint_from_env
from asoba_deploy.core.errors import InvalidInput

COMMANDS = ("deploy", "status", "history", "validate", "undeploy", "bench", "cost", "start")
# global options that take a value (to find the first positional argument)
VALUE_OPTIONS = ("--stack-name", "--region", "--endpoint-url", "--poll-seconds", "--timeout")

EPILOG = """\
examples:
  deploy-model mistral_iac_generation --dry-run     the plan, nothing changes
  deploy-model qwen3-14b                            deploy and follow each step
  deploy-model qwen3-14b --force-quantize --no-follow
  deploy-model status                               what runs where (from the ledger)
  deploy-model qwen3-14b --keep-others --evict lru  beside the models served, stopping the LRU ones
  deploy-model qwen3-14b --zero-downtime          switch the stable endpoint without dropping a request
  deploy-model undeploy --restore-flux              remove the service, start Flux again
  deploy-model undeploy qwen3-14b                   remove that model only, the others keep serving
  deploy-model bench qwen3-14b                      measure the deployed model again
  deploy-model cost --since 7d                      hours served and dollars, per model
  deploy-model start                                start a stopped instance, wait until Online

The stack is found through the CloudFormation outputs of stack AsobaModelDeploy (--stack-name).
For the local emulator: --endpoint-url http://127.0.0.1:PORT or DEPLOY_MODEL_ENDPOINT_URL
(AWS_ENDPOINT_URL is honoured too). A model named like a command: deploy-model deploy <model>.
On a terminal: colour and a live line for the running step; piped, or with NO_COLOR set: plain text.
"""


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("where")
    group.add_argument(
        "--stack-name", default=DEFAULT_STACK, help="CloudFormation stack (default %(default)s)"
    )
    group.add_argument(
        "--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your profile)"
    )
    group.add_argument(
        "--endpoint-url",
        help="AWS endpoint, e.g. the local emulator (default: DEPLOY_MODEL_ENDPOINT_URL or AWS_ENDPOINT_URL)",
    )
    group.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    group.add_argument("--poll-seconds", type=float, default=None, help=argparse.SUPPRESS)
    group.add_argument(
        "--timeout", type=float, default=None, help="give up following after this many seconds"
    )
    return common


def _positive_port(text: str) -> int:
    value = int(text)
    if not 1024 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 1024 and 65535")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="deploy-model",
        description="Resource-aware model deployment to the stack's GPU instance (Step Functions + SSM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", metavar="{<model>,status,history,validate,undeploy,bench,cost,start}"
    )

    deploy = sub.add_parser(
        "deploy",
        parents=[common],
        help="plan or deploy a model (the default command)",
        description=(
            "Start an execution for <model> (a folder of the model bucket) and follow it step by step."
        ),
    )
    deploy.add_argument("model", help="the model's folder in the bucket, e.g. qwen3-14b")
    deploy.add_argument("--dry-run", action="store_true", help="plan only: print the plan, change nothing")
    deploy.add_argument("--force-quantize", action="store_true", help="load with bitsandbytes 4-bit")
    deploy.add_argument("--no-follow", action="store_true", help="start the execution and return at once")
    deploy.add_argument(
        "--no-stop-flux", action="store_true", help="never stop Flux: plan beside it or refuse"
    )
    deploy.add_argument("--port", type=_positive_port, help="serve on this port instead of the planned one")
    deploy.add_argument("--context-tokens", type=int, help="KV cache reserve in tokens (default 4096)")
    deploy.add_argument("--instance-id", help="target instance (when the stack has several)")
    deploy.add_argument(
        "--load-from",
        choices=("auto", "stream", "disk"),
        help="load the weights streamed from S3 beside the sync, or from disk after it "
        "(default: the stack's load_from, auto: whichever the plan finds faster)",
    )
    deploy.add_argument(
        "--no-benchmark", action="store_true", help="skip the benchmark after the health check"
    )
    deploy.add_argument(
        "--keep-others",
        action="store_true",
        help="keep the models already served: the new one runs beside them on a free port when "
        'everything fits ("resident": "keep")',
    )
    deploy.add_argument(
        "--evict",
        choices=("lru",),
        help="with --keep-others: when the model does not fit, stop the least recently used "
        'resident models until it does ("evict": "lru"; without it the plan names them and stops nothing)',
    )
    switching = deploy.add_mutually_exclusive_group()
    switching.add_argument(
        "--strategy",
        choices=("auto", "stop-start", "blue-green"),
        help="how the stable endpoint moves from the model serving it: blue-green (the new one "
        "beside the old, then the router switches), stop-start (the old first, its downtime "
        "measured), auto (blue-green when both fit together; the default)",
    )
    switching.add_argument(
        "--zero-downtime",
        action="store_const",
        const="blue-green",
        dest="strategy",
        help='--strategy blue-green ("strategy": "blue-green")',
    )
    fleet_options = deploy.add_argument_group("fleet (one execution rolls the model out across instances)")
    targets = fleet_options.add_mutually_exclusive_group()
    targets.add_argument("--instances", metavar="ID,ID,...", help="these instances of the stack, in order")
    targets.add_argument("--tag", metavar="KEY=VALUE", help="the stack's instances carrying this tag")
    fleet_options.add_argument(
        "--max-concurrency", type=int, help="instances at once (default 1: one at a time)"
    )
    fleet_options.add_argument(
        "--tolerated-failures", metavar="N|P%", help="failures before no further instance starts (default 0)"
    )
    fleet_options.add_argument(
        "--rollback-on-failure",
        action="store_true",
        help="when the rollout fails, put the instances already done back as they were too",
    )

    status = sub.add_parser("status", parents=[common], help="what is deployed where (from the ledger)")
    status.add_argument("--instance-id")

    history = sub.add_parser("history", parents=[common], help="recent executions (from the ledger)")
    history.add_argument("--instance-id")
    history.add_argument("--limit", type=int, default=20, help="how many records (default %(default)s)")

    validate = sub.add_parser(
        "validate", parents=[common], help="check S3, instance, resources, services, runtime health"
    )
    validate.add_argument("--instance-id")

    undeploy = sub.add_parser(
        "undeploy",
        parents=[common],
        help="stop and remove the inference service (models stay cached)",
        description="Remove the primary inference service, the unit serving <model>, or with --all "
        "every runtime unit (the primary last). The other models keep serving; models stay cached.",
    )
    undeploy.add_argument(
        "model", nargs="?", help="the model to remove (status lists them; default: the primary's)"
    )
    undeploy.add_argument(
        "--all", action="store_true", dest="every", help="remove every resident model, the primary last"
    )
    undeploy.add_argument("--instance-id")
    undeploy.add_argument("--restore-flux", action="store_true", help="start the Flux service afterwards")

    bench = sub.add_parser(
        "bench",
        parents=[common],
        help="benchmark the deployed model again (time to first token, tokens/s, GPU memory)",
    )
    bench.add_argument("model", nargs="?", help="the deployed model (checked against the ledger)")
    bench.add_argument("--instance-id")

    cost = sub.add_parser(
        "cost", parents=[common], help="hours served and their cost, per model and instance (ledger)"
    )
    cost.add_argument("--since", help="an ISO date/time (UTC) or a span before now: 7d, 12h")
    cost.add_argument("--instance-id")

    start = sub.add_parser(
        "start",
        parents=[common],
        help="start a stopped instance and wait until it runs and is Online (its runtime restarts)",
    )
    start.add_argument("--instance-id")
    return parser


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Put the command first: `deploy-model <model> ...` is `deploy-model deploy <model> ...`, and
    options may come before the command (`--region x status` is `status --region x`)."""
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            break
        if arg.startswith("-"):
            index += 2 if arg in VALUE_OPTIONS else 1
            continue
        if arg in COMMANDS:
            return [arg, *args[:index], *args[index + 1 :]]
        return ["deploy", *args]
    if args in (["-h"], ["--help"]):
        return args
    return ["deploy", *args]  # no model given: the deploy parser says what is missing


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    if not raw:
        parser.print_help(err)
        return commands.EXIT_USAGE
    options = parser.parse_args(normalize_argv(raw))
    if options.command == "deploy" and options.evict is not None and not options.keep_others:
        parser.error("--evict lru: only with --keep-others (a replace stops no other model to evict)")
    if options.command == "undeploy" and options.every and options.model is not None:
        parser.error("undeploy: give a model or --all, not both")
    try:
        endpoint = endpoint_from_env(options.endpoint_url)
        aws = Aws.connect(options.region, endpoint)
        poll = options.poll_seconds if options.poll_seconds is not None else (0.5 if aws.is_local else 1.0)
        ctx = commands.Context(
            aws=aws,
            stack_name=options.stack_name,
            out=out,
            err=err,
            json_output=options.json,
            poll_seconds=max(0.1, poll),
            timeout=options.timeout,
        )
        if options.command == "deploy" and (options.instances is not None or options.tag is not None):
            if options.instance_id:
                raise InvalidInput(
                    "--instance-id and --instances/--tag: give one way of naming the instances"
                )
            request = commands.build_request(
                options.model,
                dry_run=options.dry_run,
                force_quantize=options.force_quantize,
                allow_stop_flux=not options.no_stop_flux,
                port=options.port,
                context_tokens=options.context_tokens,
                benchmark=not options.no_benchmark,
                load_from=options.load_from,
                keep_others=options.keep_others,
                evict=options.evict,
                strategy=options.strategy,
            )
            try:
                payload = fleet.fleet_request(
                    request,
                    instances=options.instances,
                    tag=options.tag,
                    max_concurrency=options.max_concurrency,
                    tolerated_failures=options.tolerated_failures,
                    rollback_on_failure=options.rollback_on_failure,
                )
            except ValueError as error:
                raise InvalidInput(str(error)) from None
            return fleet.deploy_fleet(ctx, payload, dry_run=options.dry_run, follow_it=not options.no_follow)
        if options.command == "deploy":
            return commands.deploy(
                ctx,
                options.model,
                dry_run=options.dry_run,
                force_quantize=options.force_quantize,
                allow_stop_flux=not options.no_stop_flux,
                port=options.port,
                context_tokens=options.context_tokens,
                instance_id=options.instance_id,
                follow_it=not options.no_follow,
                benchmark=not options.no_benchmark,
                load_from=options.load_from,
                keep_others=options.keep_others,
                evict=options.evict,
                strategy=options.strategy,
            )
        if options.command == "status":
            return commands.status(ctx, options.instance_id)
        if options.command == "history":
            return commands.history(ctx, options.instance_id, max(1, options.limit))
        if options.command == "validate":
            return commands.validate(ctx, options.instance_id)
        if options.command == "undeploy":
            return commands.undeploy(
                ctx,
                options.instance_id,
                options.restore_flux,
                timeout=options.timeout or 330,
                model=options.model,
                every=options.every,
            )
        if options.command == "bench":
            return measure.bench(ctx, options.model, options.instance_id)
        if options.command == "cost":
            return measure.cost(ctx, options.since, options.instance_id)
        if options.command == "start":
            return power.start(ctx, options.instance_id)
        parser.print_help(err)
        return commands.EXIT_USAGE
    except InvalidInput as error:
        err.write(f"error: InvalidInput: {error}\n")
        return commands.EXIT_USAGE
    except CliError as error:
        err.write(f"error: {error}\n")
        return error.exit_code
    except TimeoutError as error:
        err.write(f"error: {error}\n")
        return commands.EXIT_FAILED
    except KeyboardInterrupt:
        return commands.EXIT_INTERRUPTED
    except Exception as error:
        err.write(f"error: {_describe(error)}\n")
        return commands.EXIT_FAILED


def _describe(error: Exception) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError
    from pydantic import ValidationError

    from asoba_deploy.core.contracts import describe_validation_error

    if isinstance(error, NoCredentialsError):
        return (
            "no AWS credentials found (configure a profile; for the local emulator export "
            "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing)"
        )
    if isinstance(error, ClientError):
        info = error.response.get("Error", {})
        operation = getattr(error, "operation_name", "")
        return f"{info.get('Code', 'ClientError')}: {info.get('Message', str(error))}" + (
            f" (in {operation})" if operation else ""
        )
    if isinstance(error, ValidationError):  # an output this CLI cannot read (another version's)
        return f"unexpected {error.title}: {describe_validation_error(error)}"
    return f"{type(error).__name__}: {error}"


if __name__ == "__main__":
    sys.exit(main())
