"""`int8wb eval` and `int8wb demo`: quantize, then compare perplexity against the floating-point baseline."""

from __future__ import annotations

from int8wb.engine.cli import _common
from int8wb.engine.cli.scan import format_scan_report
from int8wb.engine.errors import BadInput
from int8wb.engine.measure import tasks


def add_parser(subparsers) -> None:
    for name, help_text in (
        ("eval", "quantize, then compare perplexity against the floating-point baseline"),
        ("demo", "the whole workflow on the default model: scan report and the comparison table"),
    ):
        command = subparsers.add_parser(name, help=help_text)
        _common.quantizing_options(command)
        _common.methods_option(command)
        command.add_argument("--tokens", type=int, default=8192, help="evaluation tokens (default 8192)")
        command.add_argument("--window", type=int, default=512, help="tokens per evaluation window (default 512)")
        command.add_argument(
            "--save-reference",
            metavar="FILE",
            help="save the floating-point model's predictions on the evaluation tokens (top-k log-probabilities)",
        )
        command.add_argument(
            "--reference",
            metavar="FILE",
            help="measure the divergence against predictions saved with --save-reference, in place of the baseline",
        )
        command.add_argument(
            "--tasks",
            metavar="NAMES_OR_YAML",
            help="also score task accuracy with lm-evaluation-harness: comma-separated lm-eval task names "
            "(LLM.int8()'s: winogrande,hellaswag,piqa,lambada_openai; their data come from the hub) or paths of "
            "task YAML files over local JSON/JSONL data (runs offline)",
        )
        command.add_argument(
            "--task-limit", type=int, metavar="N", help="score the first N examples of each task (default: all)"
        )
        command.set_defaults(func=cmd_eval if name == "eval" else cmd_demo)


def cmd_eval(args, show_scan: bool = False) -> int:
    from int8wb.engine.measure import evaluate

    task_params = _task_params(args)
    session = _common.session_with_model(args)
    methods = _common.parse_methods(args.methods)
    if task_params is not None and session.layerwise:
        raise BadInput(tasks.WHOLE_MODEL_ONLY)
    eval_params = _common.params_from(args, "tokens", "window", "corpus", "reference", "save_reference")
    if session.layerwise:
        one_pass = _common.run_one_pass(session, args, methods, scan=show_scan, evaluate=eval_params)
        scan_payload, result = one_pass["scan"], one_pass["evaluate"]
    else:
        scan_payload = _common.run_scan(session, args) if (_common.needs_scan(methods) or show_scan) else None
        _common.run_quantize(session, args, methods)
        result = _common.with_progress(args, "evaluate", session.evaluate, eval_params)
    if task_params is not None:
        task_params = {**task_params, "methods": methods}
        result["task_accuracy"] = _common.with_progress(args, "task accuracy", session.task_accuracy, task_params)
    _common.print_warnings(result["rows"])
    result = {key: value for key, value in result.items() if key != "token_detail"}  # the window's token view
    if args.json:
        _common.print_json({"scan_report": scan_payload["report"] if scan_payload else None, **result})
        return 0
    if show_scan and scan_payload:
        print(format_scan_report(scan_payload))
        print()
    print(evaluate.format_table(result))
    if task_params is not None:
        print()
        print(tasks.format_table(result["task_accuracy"]))
    return 0


def _task_params(args) -> dict | None:
    """The task_accuracy params of --tasks (None without it), checked before the model loads."""
    if args.tasks is None:
        return None
    params = {"tasks": args.tasks, "limit": args.task_limit}
    tasks.TaskSettings.from_params(params)
    tasks.require_lm_eval()
    return params


def cmd_demo(args) -> int:
    return cmd_eval(args, show_scan=True)
