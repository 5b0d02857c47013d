"""Command line: ``rayexp run | validate | report | analyze | list`` (``python -m rayexp`` is the same).

Exit codes: 0 success, 1 a trial failed (or stopped reporting: ``--stall-timeout``), 2 bad input (one
line on stderr naming the file, the field path and what is wrong; nothing launched; also trials that
no node can place, found once connected or after ``--pending-timeout``), 130 interrupted (Ctrl-C; the
summary says what finished and how to resume). ``rayexp run`` sends what else reaches stderr to a log
file whose path it prints first (rayexp.console).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from envs.env_config import ENV_KINDS
from envs.processes import COMPOSITIONS, PROCESSES, signature_of
from envs.rewards import REWARDS
from rayexp import registry
from rayexp.analyze import run_analysis
from rayexp.config import SweepError, load_sweep
from rayexp.console import OneLineError, StderrLog
from rayexp.report import report
from rayexp.settings import TaskConfig
from rayexp.studies.development import tms as tms_study
from rayexp.studies.development.tms_config import is_tms_file
from rayexp.sweep import PENDING_TIMEOUT_S, RESUME, STALL_TIMEOUT_S, print_summary, run_sweep

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


def _cmd_validate(args: argparse.Namespace) -> int:
    if is_tms_file(args.sweep):  # `study: tms`: the TMS study's own schema and driver
        return tms_study.main([args.sweep, "--validate"])
    sweep, trials = load_sweep(args.sweep)
    res = sweep.resources
    print(
        f"{args.sweep}: ok: sweep {sweep.name!r}, {len(trials)} trials "
        f"({len(sweep.tasks)} tasks x {len(trials) // len(sweep.tasks)} grid points"
        f"{f' x {sweep.axes.num_samples} samples' if sweep.axes.num_samples > 1 else ''}), "
        f"{res.cpu:g} CPU / {res.gpu:g} GPU per trial, MLflow experiment {sweep.experiment_name!r}"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    if is_tms_file(args.sweep):
        if args.resume:
            print(f"error: {args.sweep}: --resume is not supported for TMS sweeps (rerun them)", file=sys.stderr)
            return EXIT_BAD_INPUT
        return tms_study.main([args.sweep, *(["--address", args.address] if args.address else [])])
    log = StderrLog()
    try:
        outcome = run_sweep(
            args.sweep,
            resume=args.resume,
            address=args.address,
            verbose=args.verbose,
            log=log,
            pending_timeout=args.pending_timeout,
            stall_timeout=args.stall_timeout,
        )
        print_summary(outcome)
    except (SweepError, OneLineError, KeyboardInterrupt):
        raise
    except Exception as err:  # the traceback goes to the log, one line to the terminal
        if log.path is None:
            raise
        raise log.one_line(err) from None
    finally:
        log.stop()
    if outcome.interrupted:
        return EXIT_INTERRUPTED
    return 1 if outcome.errors else 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0 (0: off), got {text!r}")
    return value


def _cmd_report(args: argparse.Namespace) -> int:
    return report(args.experiment, out_dir=args.out, parent=args.parent)


def _cmd_analyze(args: argparse.Namespace) -> int:
    try:
        params = json.loads(args.params) if args.params is not None else None
    except json.JSONDecodeError as err:
        raise SweepError("--params", "", f"not valid JSON: {err.msg}") from None
    if params is not None and not isinstance(params, dict):
        raise SweepError("--params", "", "must be a JSON object")
    group_by = [g for g in args.group_by.split(",") if g] if args.group_by is not None else None
    run_analysis(
        args.experiment, args.analysis, params, group_by, parent=args.parent, address=args.address, pool=args.pool
    )
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rayexp")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _say(head: str, text: str = "", indent: int = 6) -> None:
    """One entry of ``rayexp list``, wrapped to 120 columns."""
    print(textwrap.fill(f"{head}{text}", 120, initial_indent="  ", subsequent_indent=" " * indent))


def _sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line."""
    para = " ".join((doc or "").strip().split("\n\n")[0].split())
    return para.split(". ")[0].rstrip(".") + "."


def _params(model) -> str:
    fields = model.model_fields.items()
    return ", ".join(f"{k}={f.get_default(call_default_factory=True)!r}" for k, f in fields)


def _cmd_list(args: argparse.Namespace) -> int:
    print("processes (process: {name: ..., params}):")
    for name in sorted(PROCESSES):
        _say(signature_of(name))
    for name, (required, optional) in sorted(COMPOSITIONS.items()):
        _say(f"{name}({', '.join([*required, *(f'{o}=...' for o in optional)])})")
    print("rewards (tasks: reward, reward_params):")
    for name, cls in sorted(REWARDS.items()):
        params = ", ".join(f"{k}={d!r}" for k, (d, _) in cls.PARAMS.items())
        _say(f"{name}({params}): ", _sentence(cls.__doc__))
    print("envs (tasks: env):")
    for name in ENV_KINDS:
        _say(name)
    _say("", TaskConfig.model_fields["env"].description or "", indent=2)
    print("analyses (per trial: analyses: in a sweep file; across trials: sweep_analyses: or rayexp analyze):")
    for name, a in sorted(registry.ANALYSES.items()):
        _say(f"{name} [{a.scope}]: ", a.description)
        _say("    params: ", _params(a.params), indent=8)
    print("studies:")
    for name, study in sorted(registry.STUDIES.items()):
        _say(f"{name}: ", study.description)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayexp",
        description="Ray Tune sweeps: pretrain -> probe -> PPO -> probe -> analyses, tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"rayexp {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lst = sub.add_parser(
        "list",
        help="list processes, rewards, envs, analyses and studies, with their parameters",
        description="What a sweep file can name, with parameters and defaults: processes, rewards, envs, analyses, studies.",
    )
    lst.set_defaults(func=_cmd_list)

    run = sub.add_parser(
        "run",
        help="validate and run a sweep file",
        description=(
            "Validate SWEEP, start (or join) Ray, run every trial with Ray Tune, log to MLflow "
            "(MLFLOW_TRACKING_URI, default sqlite:///mlflow.db here) and print a summary table."
        ),
    )
    run.add_argument("sweep", help="sweep YAML file, e.g. sweeps/quickstart.yaml")
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue this sweep after its driver died: finished trials are kept, "
        "unfinished ones continue from their last stage checkpoint",
    )
    run.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. 127.0.0.1:6379 or auto); default: RAY_ADDRESS or an embedded Ray on 127.0.0.1",
    )
    run.add_argument(
        "--verbose",
        type=int,
        default=0,
        choices=(0, 1, 2),
        help="Ray Tune's own status tables (0: rayexp's progress lines only)",
    )
    run.add_argument(
        "--pending-timeout",
        type=_seconds,
        default=PENDING_TIMEOUT_S,
        metavar="S",
        help=f"fail (exit 2, naming the resource) when trials wait S seconds with none running: what they ask "
        f"for cannot be placed (default {PENDING_TIMEOUT_S:g}; raise it on an autoscaling cluster; 0: wait forever)",
    )
    run.add_argument(
        "--stall-timeout",
        type=_seconds,
        default=STALL_TIMEOUT_S,
        metavar="S",
        help=f"fail (exit 1) when a running trial reports nothing for S seconds: no pretraining eval, PPO "
        f"iteration or finished stage (default {STALL_TIMEOUT_S:g}; 0: never)",
    )
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser(
        "validate",
        help="check a sweep file without running anything",
        description=(
            "Parse and validate SWEEP completely (types, unknown keys, process specs, context lengths, "
            "learning rates) and print what it would run. Exit code 2 and one line on bad input."
        ),
    )
    val.add_argument("sweep", help="sweep YAML file")
    val.set_defaults(func=_cmd_validate)

    rep = sub.add_parser(
        "report",
        help="compare the trials of an MLflow experiment",
        description=(
            "Read the latest sweep (or --parent) of EXPERIMENT from MLflow and print a table comparing "
            "its trials; write the table (CSV) and comparison figures to --out."
        ),
    )
    rep.add_argument("experiment", help="MLflow experiment name (the sweep's `experiment`, default its name)")
    rep.add_argument("--out", default=None, help="directory for report.csv and figures (default: report_EXPERIMENT)")
    rep.add_argument(
        "--parent",
        action="append",
        default=None,
        help="parent run id of the sweep to report (default: latest); repeat it to report the trials of several "
        "sweeps together, e.g. an arm run later (sweeps/development_null.yaml); sections that read a sweep "
        "run's own results (verdicts, objective) read the first",
    )
    rep.set_defaults(func=_cmd_report)

    ana = sub.add_parser(
        "analyze",
        help="run an across-trial analysis over a finished sweep",
        description=(
            "Group the finished trials of EXPERIMENT's latest sweep (or --parent) by config fields, run "
            "analysis NAME on each group (as Ray tasks) and log metrics, tables and figures to the sweep's "
            "parent MLflow run. Running it twice adds nothing new. Exit code 2 on bad input."
        ),
    )
    ana.add_argument("experiment", help="MLflow experiment name of the sweep")
    ana.add_argument("--analysis", required=True, help="across-trial analysis name, e.g. seed_spread")
    ana.add_argument(
        "--params",
        default=None,
        help='analysis parameters as JSON, e.g. \'{"metrics": ["..."]}\'; default: the sweep file\'s for this analysis',
    )
    ana.add_argument(
        "--group-by",
        default=None,
        help="comma-separated trial config fields (task, process, seed, model.d_model, ...); default: the sweep "
        "file's group_by for this analysis, else task",
    )
    ana.add_argument("--parent", default=None, help="parent run id of the sweep (default: latest)")
    ana.add_argument(
        "--pool",
        action="append",
        default=None,
        metavar="OTHER",
        help="add the trials of another sweep that differs only in its seeds (repeatable); logged as "
        "ANALYSIS_pooled_OTHER on EXPERIMENT's parent run",
    )
    ana.add_argument("--address", default=None, help="Ray cluster to join (default: RAY_ADDRESS or embedded Ray)")
    ana.set_defaults(func=_cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OneLineError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside Tune's run
        resume = f"; continue with: {RESUME.format(file=args.sweep)}" if args.command == "run" else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
