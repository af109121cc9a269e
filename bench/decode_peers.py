"""Greedy decoding on the CPU at batch 1: the workbench's INT8 methods against float32, bfloat16 and peers.

One run, every model taking turns (engine.measure.decode.timed_runs: a copy's bandwidth before each
round, then each model's greedy run), medians of --repeats:

- float32 and bfloat16 torch (the default model, and a bfloat16 copy of it);
- each workbench method (`Int8Linear`, the small-batch path of kernels.cpu_gemv);
- torchao's INT8 weight-only (`Int8WeightOnlyConfig`, lm_head left in float32 as the workbench leaves
  it), where torchao is installed; a sentence says so where it is not;
- bitsandbytes' INT8 (`load_in_8bit`, threshold 6, eval mode: in training mode it dequantizes) on the CPU.

Per model: tokens/s, the ratio to float32's, the fraction of its bandwidth bound (bytes a step reads as
planned for its stored layout: a peer's as the workbench method that stores the same: torchao's as
weight-only, bitsandbytes' as llm-int8-dynamic, INT8 rows with per-row scales), and whether its greedy
tokens match float32's. The goals of the CPU decode path are checked as ratios, never as times:
every INT8 method at least MIN_SPEEDUP x float32's tokens/s and MIN_FRACTION of its own bound, and
ahead of each peer's INT8.

Run: .venv/bin/python bench/decode_peers.py [--repeats 5] [--new-tokens 32] [--json docs/decode_cpu.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/cpu_int8.py's bitsandbytes loader

METHODS = ("vectorwise", "llm-int8", "llm-int8-dynamic", "smoothquant", "weight-only", "q8_0")
MIN_SPEEDUP = 1.8  # x float32's tokens/s; the bytes ratio of the default model is 2.4
MIN_FRACTION = 0.5  # of each method's own bandwidth bound
PEER_LAYOUT = {"torchao int8 weight-only": "weight-only", "bitsandbytes int8": "llm-int8-dynamic"}


def torchao_model(model) -> tuple[object | None, str]:
    """A copy of `model` with torchao's INT8 weight-only on every Linear but lm_head; None and why if absent."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as exc:
        return None, f"not measured: torchao is not installed ({exc})"
    quantized = copy.deepcopy(model)
    quantize_(
        quantized, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "lm_head"
    )
    return quantized.eval(), "Int8WeightOnlyConfig, lm_head in float32"


def measure(args) -> dict:
    from cpu_int8 import bitsandbytes_model

    from int8wb.engine.measure import decode
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import quantize, scan
    from int8wb.engine.task import Task
    from int8wb.kernels import cpu_gemv, ops

    loaded = loading.load({"device": "cpu"}, Task())
    settings = decode.DecodeSettings(new_tokens=args.new_tokens, repeats=args.repeats)
    ids, source = decode.prompt_ids(settings, loaded.tokenizer)
    scanned = scan.run({"tokens": 1024, "seq_len": 512}, Task(), loaded)
    models = [("float32", loaded.model, "baseline", "float32")]
    models.append(("bfloat16", copy.deepcopy(loaded.model).to(torch.bfloat16).eval(), "baseline", "bfloat16"))
    for method in METHODS:
        variant = quantize.run({"method": method, "threshold": 6.0}, Task(), loaded, scanned)
        models.append((method, variant.model, method, "float32"))
    notes = {}
    for name, build in (("torchao int8 weight-only", torchao_model), ("bitsandbytes int8", bitsandbytes_model)):
        model, notes[name] = build(loaded.model) if name.startswith("torchao") else build(loaded)
        if model is not None:
            models.append((name, model, PEER_LAYOUT[name], "float32"))
    runs, copies = decode.timed_runs([(n, m, layout) for n, m, layout, _ in models], ids, settings, "cpu", Task())
    bandwidth = statistics.median(copies)
    rows = []
    for name, model, layout, dtype in models:
        stored = model if layout == name else loaded.model  # a peer's layout is planned on the float model
        planned = decode.planned_read(stored, layout, dtype, 1, ids.shape[1], settings.new_tokens)
        row = decode.summarize(name, runs[name], planned, 1, bandwidth)
        row["diverges_from_float32_at"] = decode.first_difference(row["tokens"], runs["float32"][0].tokens)
        row["text"] = loaded.tokenizer.decode(row["tokens"][: decode.SHOWN_TOKENS])
        rows.append(row)
    baseline = rows[0]["tokens_per_s"]
    for row in rows:
        row["speedup"] = row["tokens_per_s"] / baseline
    return {
        "command": "python bench/decode_peers.py " + " ".join(sys.argv[1:]),
        "cpu": cpu_description(),
        "int8_path": f"{ops.int8_product_path('cpu')}; small batch: {cpu_gemv.isa()} (up to {cpu_gemv.MAX_ROWS} rows)",
        "threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "source": source,
        "settings": {
            "new_tokens": settings.new_tokens,
            "repeats": settings.repeats,
            "prompt_tokens": int(ids.shape[1]),
        },
        "copy_bandwidth": {"bytes_per_s": bandwidth, "runs": copies},
        "peers": notes,
        "rows": rows,
        "goals": goals(rows),
    }


def goals(rows: list[dict]) -> dict:
    """Each INT8 method against the decode path's goals, as ratios measured in this run."""
    by_name = {row["method"]: row for row in rows}
    peers = [by_name[name]["tokens_per_s"] for name in PEER_LAYOUT if name in by_name]
    return {
        method: {
            "speedup": by_name[method]["speedup"],
            "fraction_of_bound": by_name[method]["fraction_of_bound"],
            "met": by_name[method]["speedup"] >= MIN_SPEEDUP
            and by_name[method]["fraction_of_bound"] >= MIN_FRACTION
            and all(by_name[method]["tokens_per_s"] > peer for peer in peers),
        }
        for method in METHODS
    }


def cpu_description() -> str:
    """The CPU's model name and the instruction sets the INT8 paths look for."""
    capabilities = torch.cpu.get_capabilities()
    names = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{model}, {os.cpu_count()} cores; " + ", ".join(
        f"{name} {'yes' if capabilities.get(name) else 'no'}" for name in names
    )


def report(result: dict) -> str:
    lines = [
        f"{result['cpu']}",
        f"INT8 path: {result['int8_path']}; load average {result['load_average'][0]:.1f}",
        f"greedy decoding of {result['settings']['new_tokens']} tokens, batch 1, median of {result['settings']['repeats']} runs; "
        f"copy bandwidth {result['copy_bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s",
        "",
        f"{'model':<26}{'tokens/s':>10}{'x float32':>11}{'of bound':>10}{'MB/token':>10}{'same tokens as float32':>24}",
    ]
    for row in result["rows"]:
        same = "yes" if row["diverges_from_float32_at"] is None else f"no, from token {row['diverges_from_float32_at']}"
        lines.append(
            f"{row['method']:<26}{row['tokens_per_s']:>10.1f}{row['speedup']:>11.2f}{row['fraction_of_bound']:>10.0%}"
            f"{row['bytes_per_token'] / 1e6:>10.1f}{same:>24}"
        )
    lines += ["", *(f"{name}: {note}" for name, note in result["peers"].items()), ""]
    lines.append(f"goals (>= {MIN_SPEEDUP}x float32, >= {MIN_FRACTION:.0%} of bound, ahead of the peers' INT8):")
    lines += [
        f"  {method:<20}{goal['speedup']:.2f}x  {goal['fraction_of_bound']:.0%}  {'met' if goal['met'] else 'NOT met'}"
        for method, goal in result["goals"].items()
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result = measure(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
