"""The CPU INT8 path against float32 and its peers, as ratios to a float32 baseline measured in the same run.

1. One Linear forward, tokens x in -> out with one planted outlier column, modules in eval mode: ours
   (`vectorwise`, `llm-int8-dynamic`), bitsandbytes `Linear8bitLt` at thresholds 0 and 6, torch.ao
   dynamic quantization (fbgemm, per-tensor activation scales), torchao's int8 dynamic config where
   installed; ratio = time / float32 `nn.Linear` time.
   Where the CPU has VNNI, ours also on the `float32-gemm` path that CPUs without it take.
2. The whole default model: perplexity and evaluation time of float32, each workbench method,
   bitsandbytes `load_in_8bit` and torch.ao dynamic quantization, on the same tokens; each method's
   perplexity again with the product forced onto `float32-gemm` where the CPU takes another path, which
   must be the same to every digit.
3. The calibration scan against a plain forward of the decoder on the same tokens, and the scan's
   abs-max and counts with the fused statistics against the torch ops.

Every timing is the median of --repeats runs taken round-robin (A B C A B C ...), so a change of load
on this shared machine hits every candidate alike; the load average is recorded with each table.

Run: .venv/bin/python bench/cpu_int8.py [--json] [--repeats 5] [--skip-model] [--skip-scan]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable

import torch
from round_robin import interleaved_medians

from int8wb.kernels import cpu_int8, cpu_loader, ops

SHAPES = [(4096, 576, 1536), (4096, 1536, 576), (512, 4096, 4096), (2048, 4096, 11008)]  # tokens, in, out
THRESHOLD = 6.0


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


# --- 1. one Linear ---------------------------------------------------------------------------------


def layer_candidates(tokens: int, cols: int, out: int) -> dict[str, Callable[[], object]]:
    """Every implementation of one Linear forward on the same input, as zero-argument calls."""
    from int8wb.engine.quant.int8_linear import Int8Linear

    generator = torch.Generator().manual_seed(tokens + cols + out)
    x = torch.randn(tokens, cols, generator=generator)
    x[:, 7] *= 20.0  # one planted outlier column
    linear = torch.nn.Linear(cols, out).eval()
    candidates = {"float32": lambda: linear(x)}
    for method in ("vectorwise", "llm-int8-dynamic"):
        module = Int8Linear.from_linear(linear, method, THRESHOLD).eval()
        candidates[method] = lambda module=module: module(x)
        if cpu_int8.detected_product_path() != cpu_int8.FLOAT32_GEMM:
            candidates[f"{method} ({cpu_int8.FLOAT32_GEMM})"] = lambda module=module: on_float32_gemm(module, x)
    for threshold in (0.0, THRESHOLD):
        module = bitsandbytes_linear(linear, threshold)
        if module is not None:
            candidates[f"bitsandbytes t={threshold:g}"] = lambda module=module: module(x)
    ao = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)
    candidates["torch.ao dynamic"] = lambda: ao(x)
    torchao_module = torchao_linear(linear)
    if torchao_module is not None:
        candidates["torchao int8 dynamic"] = lambda: torchao_module(x)
    return candidates


def on_float32_gemm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) with the INT8 product forced onto the float32 GEMM, the path of CPUs without VNNI."""
    with cpu_int8.forced_product_path(cpu_int8.FLOAT32_GEMM):
        return module(x)


def bitsandbytes_linear(linear: torch.nn.Linear, threshold: float):
    """bitsandbytes' Linear8bitLt with `linear`'s weights, quantized on the CPU, in eval mode; None if absent."""
    try:
        import bitsandbytes as bnb
    except Exception:  # not installed, or no backend for this machine
        return None
    module = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=True, has_fp16_weights=False, threshold=threshold
    )
    module.weight = bnb.nn.Int8Params(linear.weight.detach().clone(), requires_grad=False, has_fp16_weights=False)
    module.bias = torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    return module.to("cpu").eval()


def torchao_linear(linear: torch.nn.Linear):
    """torchao's int8 dynamic-activation, int8-weight config on a copy of `linear`; None if not installed."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return None
    module = torch.nn.Sequential(copy.deepcopy(linear))
    quantize_(module, Int8DynamicActivationInt8WeightConfig())
    return module


def layer_table(repeats: int, shapes: int) -> dict:
    rows = []
    for tokens, cols, out in SHAPES[:shapes]:
        with torch.no_grad():
            medians = interleaved_medians(layer_candidates(tokens, cols, out), repeats)
        baseline = medians["float32"]
        rows.append(
            {
                "shape": [tokens, cols, out],
                "float32_ms": baseline * 1e3,
                "ratio": {name: seconds / baseline for name, seconds in medians.items() if name != "float32"},
                "load_average": load_average(),
            }
        )
    return {"int8_path": ops.int8_product_path("cpu"), "threads": torch.get_num_threads(), "rows": rows}


# --- 2. the whole model ----------------------------------------------------------------------------

MODEL_METHODS = ("absmax-tensor", "vectorwise", "llm-int8", "llm-int8-dynamic", "weight-only")


def model_table(repeats: int, tokens: int) -> dict:
    """Perplexity and evaluation seconds of every variant of the default model on the same tokens."""
    from int8wb.engine.measure import evaluate
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import quantize, scan
    from int8wb.engine.task import Task

    loaded = loading.load({}, Task())
    scanned = scan.run({"tokens": 4096, "seq_len": 512, "threshold": THRESHOLD}, Task(), loaded)
    settings = evaluate.EvalSettings.from_params({"tokens": tokens})
    windows, _ = evaluate.evaluation_windows(settings, loaded.tokenizer)
    models = {"float32": loaded.model}
    for method in MODEL_METHODS:
        params = {"method": method, "threshold": THRESHOLD}
        models[method] = quantize.run(params, Task(), loaded, scanned).model
    models["torch.ao dynamic"] = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(loaded.model), {torch.nn.Linear: torch.ao.quantization.default_dynamic_qconfig}, dtype=torch.qint8
    )
    models["torch.ao dynamic"].lm_head = loaded.model.lm_head  # the LM head stays in float32, as in ours
    bnb_model, bnb_note = bitsandbytes_model(loaded)
    if bnb_model is not None:
        models["bitsandbytes load_in_8bit"] = bnb_model
    perplexity = {
        name: evaluate.perplexity(model, windows, settings.batch_size, Task())["perplexity"]
        for name, model in models.items()
    }
    float32_gemm_perplexity = {}
    if cpu_int8.detected_product_path() != cpu_int8.FLOAT32_GEMM:  # the other path must give the same table
        with cpu_int8.forced_product_path(cpu_int8.FLOAT32_GEMM):
            float32_gemm_perplexity = {
                name: evaluate.perplexity(models[name], windows, settings.batch_size, Task())["perplexity"]
                for name in MODEL_METHODS
            }
    with torch.no_grad():
        calls = {
            name: lambda model=model: evaluate.perplexity(model, windows, settings.batch_size, Task())
            for name, model in models.items()
        }
        medians = interleaved_medians(calls, repeats)
    return {
        "tokens": int(windows.numel()),
        "float32_seconds": medians["float32"],
        "rows": [
            {
                "model": name,
                "perplexity": perplexity[name],
                "seconds": medians[name],
                "ratio": medians[name] / medians["float32"],
                **(
                    {f"perplexity_{cpu_int8.FLOAT32_GEMM}": float32_gemm_perplexity[name]}
                    if name in float32_gemm_perplexity
                    else {}
                ),
            }
            for name in models
        ],
        "int8_path": ops.int8_product_path("cpu"),
        "perplexity_identical_on_every_path": all(
            value == perplexity[name] for name, value in float32_gemm_perplexity.items()
        ),
        "bitsandbytes": bnb_note,
        "load_average": load_average(),
    }


def bitsandbytes_model(loaded) -> tuple[object | None, str]:
    """The default model loaded by transformers with bitsandbytes' load_in_8bit (threshold 6) on the CPU.

    The workbench's model is saved as a transformers directory first: the default model is a GGUF file,
    which transformers would dequantize differently from the baseline measured here.
    """
    import tempfile

    try:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        config = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=THRESHOLD)
        with tempfile.TemporaryDirectory() as directory:
            loaded.model.save_pretrained(directory)
            model = AutoModelForCausalLM.from_pretrained(directory, quantization_config=config, device_map="cpu")
    except Exception as exc:  # what failed is the result for this row
        return None, f"not measured: {type(exc).__name__}: {exc}"
    return model.eval(), "load_in_8bit, threshold 6.0, eval mode"


# --- 3. the scan -----------------------------------------------------------------------------------


def scan_ratio(repeats: int, tokens: int) -> dict:
    """Seconds of the calibration scan against a forward of the decoder on the same token batches."""
    from int8wb.engine.model import corpus
    from int8wb.engine.pipeline import loading
    from int8wb.engine.quant import scan
    from int8wb.engine.task import Task

    loaded = loading.load({}, Task())
    params = {"tokens": tokens, "seq_len": 512, "threshold": THRESHOLD}
    ids = corpus.tokenize(loaded.tokenizer, corpus.load_split(None).calibration, tokens)
    batches = corpus.windows(ids, 512, tokens).split(8)
    decoder = loaded.model.model  # the decoder stack without the LM head

    def forward() -> None:
        with torch.no_grad():
            for batch in batches:
                decoder(input_ids=batch, use_cache=False)

    medians = interleaved_medians({"forward": forward, "scan": lambda: scan.run(params, Task(), loaded)}, repeats)
    fused = scan.run(params, Task(), loaded)
    with cpu_loader.disabled():
        plain = scan.run(params, Task(), loaded)
    same = all(
        (a.absmax == b.absmax).all() and (a.count_over == b.count_over).all()
        for a, b in zip(fused.layers, plain.layers)
    )
    hist_moved = sum(int(abs(a.hist - b.hist).sum()) for a, b in zip(fused.layers, plain.layers))
    return {
        "tokens": fused.n_tokens,
        "forward_seconds": medians["forward"],
        "scan_seconds": medians["scan"],
        "ratio": medians["scan"] / medians["forward"],
        "absmax_and_counts_identical_to_torch_ops": bool(same),
        "histogram_values_in_another_bin": hist_moved,
        "histogram_values": int(sum(int(layer.hist.sum()) for layer in fused.layers)),
        "load_average": load_average(),
    }


def print_tables(result: dict) -> None:
    layers = result["layers"]
    if not layers["rows"]:
        return _print_model_and_scan(result)
    print(f"one Linear, ratio to float32 nn.Linear ({layers['threads']} threads, INT8 product: {layers['int8_path']})")
    names = list(layers["rows"][0]["ratio"])
    width = max(map(len, names)) + 2
    print(f"{'T x K x N':<18}{'fp32 ms':>9}" + "".join(f"{name:>{width}}" for name in names) + "   load")
    for row in layers["rows"]:
        shape = "x".join(map(str, row["shape"]))
        ratios = "".join(f"{row['ratio'][name]:>{width - 1}.2f}x" for name in names)
        print(f"{shape:<18}{row['float32_ms']:>9.1f}{ratios}   {row['load_average'][0]}")
    _print_model_and_scan(result)


def _print_model_and_scan(result: dict) -> None:
    if "model" in result:
        model = result["model"]
        print(f"\nwhole default model, {model['tokens']:,} evaluation tokens (load {model['load_average'][0]})")
        for row in model["rows"]:
            print(f"{row['model']:<28}{row['perplexity']:>10.3f}{row['seconds']:>9.2f} s{row['ratio']:>7.2f}x")
        print(f"bitsandbytes: {model['bitsandbytes']}")
        print(f"perplexities identical on {cpu_int8.FLOAT32_GEMM}: {model['perplexity_identical_on_every_path']}")
    if "scan" in result:
        scan = result["scan"]
        print(
            f"\nscan of {scan['tokens']:,} tokens {scan['scan_seconds']:.2f} s, decoder forward "
            f"{scan['forward_seconds']:.2f} s: {scan['ratio']:.2f}x; abs-max and counts identical to torch ops: "
            f"{scan['absmax_and_counts_identical_to_torch_ops']}; histogram values in another bin: "
            f"{scan['histogram_values_in_another_bin']:,} of {scan['histogram_values']:,} (load {scan['load_average'][0]})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per candidate (the median is reported)")
    parser.add_argument("--tokens", type=int, default=2048, help="evaluation tokens of the whole-model comparison")
    parser.add_argument("--scan-tokens", type=int, default=4096, help="calibration tokens of the scan comparison")
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="how many of the Linear shapes to time")
    parser.add_argument("--skip-model", action="store_true", help="leave out the whole-model comparison")
    parser.add_argument("--skip-scan", action="store_true", help="leave out the scan comparison")
    args = parser.parse_args()
    result = {"load_average_at_start": load_average(), "layers": layer_table(args.repeats, args.shapes)}
    if not args.skip_model:
        result["model"] = model_table(args.repeats, args.tokens)
    if not args.skip_scan:
        result["scan"] = scan_ratio(args.repeats, args.scan_tokens)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_tables(result)


if __name__ == "__main__":
    main()
