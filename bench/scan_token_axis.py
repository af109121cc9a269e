"""What the token axis costs the scan, and what it finds on the default model.

Times the calibration scan of the default model (SmolLM2-135M) with the token axis (the residual stream per
layer and token, each Linear input's largest |x| per token, each Linear output's largest |x|) and without it,
round-robin in the same run on the same loaded model, and reports the ratio (the goal: at most 1.10). Then
prints what the scan found with no hints: the massive activations per layer (engine.quant.token_axis) and the
precision alarms (engine.quant.precision).

    .venv/bin/python bench/scan_token_axis.py [--repeats 3] [--tokens 4096] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os

from round_robin import interleaved_medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()

    from int8wb.engine.cli.scan import format_token_axis
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import scan
    from int8wb.engine.task import Task

    loaded = loading.load({"device": args.device}, Task())
    params = {"tokens": args.tokens, "seq_len": 512, "batch_size": 8}
    medians = interleaved_medians(
        {
            "without": lambda: scan.run({**params, "token_axis": False}, Task(), loaded),
            "with": lambda: scan.run(params, Task(), loaded),
        },
        args.repeats,
    )
    result = scan.run(params, Task(), loaded)
    massive = result.massive_activations()
    first_layer = min((m["layer"] for m in massive), default=None)
    numbers = {
        "device": loaded.device,
        "dtype": loaded.dtype,
        "tokens": result.n_tokens,
        "repeats": args.repeats,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "scan_seconds_without_token_axis": round(medians["without"], 3),
        "scan_seconds_with_token_axis": round(medians["with"], 3),
        "ratio": round(medians["with"] / medians["without"], 3),
        "massive_activations": len(massive),
        "first_massive_layer": first_layer,
        "largest": max(massive, key=lambda m: m["value"], default=None),
        "per_layer_peak": [
            {
                "layer": r.layer,
                "max_abs": round(r.peak, 1),
                "dim": int(r.dim_absmax.argmax()),
                "median_abs": r.median_abs,
            }
            for r in result.residual
        ],
        "precision_alarms": [a["message"] for a in result.precision_alarms()],
        "load_notes": loaded.notes,
    }
    print(json.dumps({k: v for k, v in numbers.items() if k != "per_layer_peak"}, indent=1))
    print(format_token_axis(result.token_axis_payload()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(numbers, out, indent=1)


if __name__ == "__main__":
    main()
