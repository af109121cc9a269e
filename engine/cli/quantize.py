"""`int8wb quantize`: quantize with one or more methods and report the sizes of what is stored."""

from __future__ import annotations

from int8wb.engine.cli import _common
from int8wb.engine.measure.evaluate import coverage_lines, smoothing_note


def add_parser(subparsers) -> None:
    quantize = subparsers.add_parser("quantize", help="quantize with one or more methods and report sizes")
    _common.quantizing_options(quantize)
    _common.methods_option(quantize)
    quantize.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    session = _common.session_with_model(args)
    methods = _common.parse_methods(args.methods)
    if session.layerwise:
        result = _common.run_one_pass(session, args, methods)["quantize"]
    else:
        if _common.needs_scan(methods):
            _common.run_scan(session, args)
        result = _common.run_quantize(session, args, methods)
    _common.print_warnings(result["models"])
    if args.json:
        _common.print_json(result)
    else:
        print(f"{'method':<18}{'INT8 MB':>10}{'float MB':>10}{'total MB':>10}{'outlier dims':>14}{'INT8 share':>12}")
        for row in result["models"]:
            print(
                f"{row['method']:<18}{row['int8_bytes'] / 1e6:>10.1f}{row['float_bytes'] / 1e6:>10.1f}"
                f"{row['total_bytes'] / 1e6:>10.1f}{row['outlier_dims']:>14,}{row['int8_share']:>12.1%}"
            )
        for row in result["models"]:
            if row.get("smoothing"):
                print(smoothing_note(row["method"], row["smoothing"]))
        print("INT8 share: of the decoder's matrix weights (embeddings and output head are outside it)")
        for line in coverage_lines(result["models"]):
            print(line)
    return 0
