"""Layer by layer at 7B scale, on a machine that cannot hold the model in float32.

Builds once, into a cache directory outside the repository, a model with the published Llama-2-7B
configuration (resources/presets/llama-2-7b.json) and random weights stored as bfloat16 safetensors
shards (13.5 GB): each weight drawn from N(0, initializer_range), each norm 1, and a few outlier
feature dimensions planted from layer 8 on, growing with depth (those dimensions of both RMSNorm
weights of each layer are scaled, so the attention and MLP inputs carry them, as LLM.int8() found
in real models from 6.7B parameters). The tokenizer is byte level (the Llama tokenizer is not
available offline); ids stay below 257 of the 32,000.

Then, in a fresh process whose peak RSS is its own, one layer-by-layer pass: scan (512 calibration
tokens), static llm-int8 quantize + export, and the perplexity of the baseline and llm-int8 on 512
tokens; then a second process opens the export in transformers + bitsandbytes on the CPU and reports
missing and unexpected weights. `--compare SHAPE` times the same work in memory and layer by layer
on a model that fits both ways (medians of `--repeats` runs, each in its own process) and reports
throughput in parameter-tokens per second: parameters x tokens through the model (the calibration
tokens once, the evaluation tokens once per stream) over the wall time.

    nice python bench/scale.py --shape llama-2-7b            # build once, run, check the export
    nice python bench/scale.py --shape llama-1b --compare llama-0.3b --repeats 3

Timings on a shared machine are noisy: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PLANTED_DIMS = (1415, 2533, 3979)
PLANT_FROM_LAYER = 8
SHAPES = {
    "llama-2-7b": None,  # the preset as published
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_key_value_heads": 4},
    "llama-0.3b": {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16, "num_key_value_heads": 8},
}
TOKENS = 512


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("INT8WB_BENCH_DIR") or Path(user_cache_dir("int8-workbench")) / "bench")


def config_of(shape: str):
    from transformers import LlamaConfig

    preset = json.loads((ROOT / "resources" / "presets" / "llama-2-7b.json").read_text())
    preset.pop("workbench_preset")
    preset.pop("model_type")
    preset.update(SHAPES[shape] or {})
    preset["num_attention_heads"] = preset["hidden_size"] // 128
    return LlamaConfig(**preset, dtype="bfloat16", bos_token_id=256, eos_token_id=256)


def build(shape: str, directory: Path) -> Path:
    """The random model of `shape` in `directory`, written one tensor at a time; skipped when already there."""
    import torch
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    from int8wb.engine.checkpoint.export import WEIGHTS_INDEX_NAME, parse_size, plan_shards, write_json
    from int8wb.engine.checkpoint.tensor_files import PlannedFiles

    if (directory / "complete").is_file():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config = config_of(shape)
    with init_empty_weights():
        skeleton = LlamaForCausalLM(config)
    specs = {k: torch.empty(t.shape, dtype=torch.bfloat16, device="meta") for k, t in skeleton.state_dict().items()}
    split = plan_shards(specs, parse_size("2GB"))
    files = PlannedFiles(directory, dict(split.filename_to_tensors), specs, {"format": "pt"})
    started = time.perf_counter()
    for i, (name, spec) in enumerate(specs.items()):
        files.write(name, _weight(name, spec.shape, config))
        print(f"\rbuilding {directory.name}: {i + 1}/{len(specs)} tensors", end="", file=sys.stderr)
    files.close()
    total = sum(t.numel() * 2 for t in specs.values())
    write_json(
        directory / WEIGHTS_INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": split.tensor_to_filename}
    )
    config.save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    (directory / "complete").write_text(json.dumps({"seconds": time.perf_counter() - started, "bytes": total}))
    print(f"\nbuilt {total / 1e9:.1f} GB in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return directory


def _weight(name: str, shape, config):
    """N(0, initializer_range) for matrices, 1 for norms with the planted dimensions scaled from layer 8 on."""
    import torch

    if name.endswith("norm.weight"):
        weight = torch.ones(shape)
        layer = int(name.split(".")[2]) if name.startswith("model.layers.") else -1
        if layer >= PLANT_FROM_LAYER:
            depth = (layer - PLANT_FROM_LAYER) / max(config.num_hidden_layers - 1 - PLANT_FROM_LAYER, 1)
            weight[planted_dims(shape[0])] = 3.0 + 12.0 * depth
        return weight.to(torch.bfloat16)
    generator = torch.Generator().manual_seed(sum(map(ord, name)) * 7919 + len(name))
    out = torch.empty(shape, dtype=torch.bfloat16)
    rows = max(1, (1 << 24) // shape[-1])
    for start in range(0, shape[0], rows):  # float32 one slab at a time, not the whole matrix
        slab = torch.randn((min(rows, shape[0] - start), *shape[1:]), generator=generator)
        out[start : start + rows] = slab.mul_(config.initializer_range)
    return out


def planted_dims(hidden: int) -> list[int]:
    """PLANTED_DIMS, folded into the smaller shapes' hidden size."""
    return [dim % hidden for dim in PLANTED_DIMS]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|eos|>")


# --- what each child process does ---------------------------------------------------------------------


def job(model: str, offload: str, out: str) -> dict:
    """Scan, static llm-int8 quantize + export, perplexity of baseline and llm-int8: the in-memory session's
    four requests, or one layer-by-layer pass. Returns the figures and this process's peak RSS."""
    from int8wb.engine.planning.memory import peak_rss_bytes
    from int8wb.engine.process.session import Session
    from int8wb.engine.task import Task

    scan = {"tokens": TOKENS, "seq_len": TOKENS, "batch_size": 1}
    evaluate = {"tokens": TOKENS, "window": TOKENS, "batch_size": 1}
    started = time.perf_counter()
    session = Session()
    info = session.load_model({"model": model, "offload": offload}, Task())
    loaded = time.perf_counter()
    if session.layerwise:
        params = {"scan": scan, "methods": ["llm-int8"], "evaluate": evaluate, "export": {"out": out}}
        result = session.run_pass(params, Task())
        scan_payload, rows = result["scan"], result["evaluate"]["rows"]
    else:
        scan_payload = session.scan(scan, Task())
        session.quantize({"methods": ["llm-int8"]}, Task())
        rows = session.evaluate(evaluate, Task())["rows"]
        session.export({"method": "llm-int8", "out": out}, Task())
    finished = time.perf_counter()
    return {
        "offload": info["offload"],
        "parameters": info["parameters"],
        "load_s": loaded - started,
        "work_s": finished - loaded,
        "wall_s": finished - started,
        "peak_rss_bytes": peak_rss_bytes(),
        "perplexity": {row["method"]: row["perplexity"] for row in rows},
        "planted_found": _planted_found(scan_payload),
        "export_bytes": sum(p.stat().st_size for p in Path(out).iterdir()),
    }


def _planted_found(scan_payload: dict) -> dict:
    """Per planted layer: whether every planted dimension is over 6.0 in its attention and MLP inputs."""
    import numpy as np

    found = {}
    for layer in scan_payload["layers"]:
        if layer["kind"] in ("attn_in", "mlp_in") and layer["layer"] >= PLANT_FROM_LAYER:
            absmax = np.asarray(layer["absmax"])
            over = set(np.flatnonzero(absmax > 6.0).tolist())
            found.setdefault(layer["layer"], True)
            found[layer["layer"]] &= set(planted_dims(absmax.size)) <= over
    return {"layers": len(found), "all_found": all(found.values()), "missed": [k for k, v in found.items() if not v]}


def check_export(out: str) -> dict:
    """transformers + bitsandbytes open the export on the CPU: missing, unexpected and mismatched weights."""
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from int8wb.engine.planning.memory import peak_rss_bytes

    started = time.perf_counter()
    model, info = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", output_loading_info=True)
    return {
        "missing": list(info["missing_keys"]),
        "unexpected": list(info["unexpected_keys"]),
        "mismatched": [list(map(str, m)) for m in info["mismatched_keys"]],
        "down_proj_is_bnb_int8": isinstance(model.model.layers[-1].mlp.down_proj, bnb.nn.Linear8bitLt),
        "seconds": time.perf_counter() - started,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def in_child(*args: str) -> dict:
    """Run this file's `--child` in a fresh process (its peak RSS is its own); its JSON answer."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(shape: str, offload: str) -> dict:
    model = build(shape, cache_dir() / f"{shape}-random-bf16")
    out = cache_dir() / f"{shape}-llm-int8-{offload}"
    shutil.rmtree(out, ignore_errors=True)
    figures = in_child("job", str(model), offload, str(out))
    figures["model_bytes"] = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    figures["param_tokens_per_s"] = figures["parameters"] * 3 * TOKENS / figures["wall_s"]
    return {**figures, "out": str(out)}


def compare(shape: str, repeats: int) -> dict:
    """In memory against layer by layer on a model that fits both ways: medians of `repeats` alternating runs."""
    runs: dict[str, list[dict]] = {"none": [], "disk": []}
    for _ in range(repeats):
        for offload in runs:
            runs[offload].append(measure(shape, offload))
    median = {o: statistics.median(r["wall_s"] for r in rs) for o, rs in runs.items()}
    return {
        "shape": shape,
        "repeats": repeats,
        "wall_s": {o: [round(r["wall_s"], 1) for r in rs] for o, rs in runs.items()},
        "median_wall_s": median,
        "layer_by_layer_over_in_memory": median["disk"] / median["none"],
        "peak_rss_bytes": {o: max(r["peak_rss_bytes"] for r in rs) for o, rs in runs.items()},
        "perplexity_equal": all(
            abs(a["perplexity"][m] / b["perplexity"][m] - 1) < 1e-6
            for a, b in zip(runs["none"], runs["disk"])
            for m in a["perplexity"]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="llama-2-7b")
    parser.add_argument("--compare", choices=SHAPES, default=None, help="time in memory vs layer by layer on this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        print(json.dumps(job(*rest) if kind == "job" else check_export(*rest)))
        return
    report = {"machine": f"{os.cpu_count()} CPUs, shared", "shape": args.shape}
    report["layer_by_layer"] = measure(args.shape, "disk")
    report["export_check"] = in_child("check", report["layer_by_layer"]["out"])
    if args.compare:
        report["compare"] = compare(args.compare, args.repeats)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
