"""One client's working state in the engine: the loaded model, its scan, its quantized variants.

`Session.handle(request_type, params, task)` is what the server calls for every
job request; the CLI calls the same methods. Results are dicts of JSON-able
values and numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from int8wb.engine.errors import BadInput


class Session:
    """`allow_remote_code` is the choice of whoever started the engine (never a request's): whether a
    model may run the Python code it ships (transformers' trust_remote_code)."""

    def __init__(self, allow_remote_code: bool = False) -> None:
        self.allow_remote_code = allow_remote_code
        self.loaded = None  # engine.model.loaded.LoadedModel
        self.scan_result = None  # engine.quant.scan.ScanResult
        self.quantized: dict[str, Any] = {}  # method -> engine.quant.quantize.QuantizedModel
        self.memory: dict[str, dict[str, Any]] = {}  # phase name -> measured memory of that phase
        # the last super weight experiment (engine.measure.super_weight)
        self.super_weights: dict[str, Any] | None = None

    def handlers(self) -> dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]]:
        """Request type -> method; the server's job table."""
        return {
            "load_model": self.load_model,
            "scan": self.scan,
            "quantize": self.quantize,
            "evaluate": self.evaluate,
            "task_accuracy": self.task_accuracy,
            "bench_decode": self.bench_decode,
            "export": self.export,
            "plan_memory": self.plan_memory,
            "sensitivity": self.sensitivity,
            "super_weights": self.find_super_weights,
        }

    def handle(self, request_type: str, params: dict[str, Any], task) -> dict[str, Any]:
        handler = self.handlers().get(request_type)
        if handler is None:
            raise BadInput(f"unknown request type {request_type!r}")
        if not isinstance(params, dict):
            raise BadInput(f"params of {request_type!r} must be an object, got {type(params).__name__}")
        return handler(params, task)

    def require_model(self):
        if self.loaded is None:
            raise BadInput("no model is loaded: load a model first")
        return self.loaded

    def load_model(self, params: dict[str, Any], task) -> dict[str, Any]:
        """Load a model in place of the current one, which is released first: a model replacing one of
        the same size fits where one does (if the load fails, no model is loaded)."""
        from int8wb.engine.model.loaded import pick_device
        from int8wb.engine.pipeline import loading

        loading.check_params(params)
        self.release_model()
        with self._phase("load", pick_device(params.get("device"))):
            loaded = loading.load(params, task, allow_remote_code=self.allow_remote_code)
        self.loaded = loaded
        return {**loaded.describe(), "memory": self.memory["load"]}

    def release_model(self) -> None:
        """Forget the model and everything made from it, and give its memory back."""
        import gc
        import sys

        self.loaded, self.scan_result, self.quantized, self.super_weights = None, None, {}, None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def scan(self, params: dict[str, Any], task) -> dict[str, Any]:
        from int8wb.engine.quant import scan

        if self.layerwise:
            return self.run_pass({"scan": params}, task)["scan"]
        self.scan_result = scan.run(params, task, self.require_model())
        return self.scan_result.to_payload()

    @property
    def layerwise(self) -> bool:
        """Whether the loaded model's weights stay on disk (engine.pipeline.on_disk): every job is one pass."""
        from int8wb.engine.pipeline.on_disk import LayerwiseModel

        return isinstance(self.loaded, LayerwiseModel)

    def run_pass(self, params: dict[str, Any], task, variants: list | None = None) -> dict[str, Any]:
        """One layer-by-layer pass over a model on disk (engine.pipeline.layer_pass): scan, quantize, evaluate
        and export, each when its params are given; `variants` (recipes already quantized) replace `methods`.

        Returns {"scan", "quantize", "evaluate", "export"}: each part's payload, None where not asked.
        """
        from int8wb.engine.pipeline import layer_pass

        loaded = self.require_model()
        request = layer_pass.request_from_params(params, loaded.model, self.scan_result)
        if variants is not None:
            request.variants = variants
        with self._phase("layer-by-layer pass", loaded.device):
            result = layer_pass.run(loaded, request, task)
        memory = self.memory["layer-by-layer pass"]
        if result.scan is not None:
            self.scan_result = result.scan
        if variants is None:
            self.quantized.update({variant.method: variant for variant in result.variants})
        return {
            "scan": result.scan.to_payload() if result.scan is not None else None,
            "quantize": {"models": [{**v.summary(), "memory": memory} for v in result.variants]},
            "evaluate": result.evaluation,
            "export": result.export.to_payload() if result.export is not None else None,
        }

    def quantize(self, params: dict[str, Any], task) -> dict[str, Any]:
        """Quantize with each of `params["methods"]`; a method quantized again replaces its old variant."""
        from int8wb.engine.quant import quantize

        loaded = self.require_model()
        methods = quantize.check_methods(params.get("methods"))
        params = self._with_kept_super_weights(params)
        if self.layerwise:
            return self.run_pass({**params, "methods": methods}, task)["quantize"]
        summaries = []
        for i, method in enumerate(methods):
            step = task.slice(i / len(methods), (i + 1) / len(methods))
            with self._phase(f"quantize {method}", loaded.device):
                variant = quantize.run({**params, "method": method}, step, loaded, self.scan_result)
            self.quantized[method] = variant
            summaries.append({**variant.summary(), "memory": self.memory[f"quantize {method}"]})
        return {"models": summaries}

    def _with_kept_super_weights(self, params: dict[str, Any]) -> dict[str, Any]:
        """Quantize params with `keep_super_weights` (true) turned into the `super_weights` the last experiment
        found; refused where there is nothing to keep or the model runs layer by layer from disk."""
        keep = params.get("keep_super_weights", False)
        if not isinstance(keep, bool):
            raise BadInput(f"keep_super_weights must be true or false, got {keep!r}")
        if self.layerwise and (keep or params.get("super_weights")):
            raise BadInput("keeping super weights needs the model in memory (--offload none), where they are found")
        if not keep:
            return params
        if self.super_weights is None:
            raise BadInput(
                "no super weight experiment ran on this model: run it first (int8wb outliers --super-weights)"
            )
        if not self.super_weights["super_weights"]:
            raise BadInput(f"the super weight experiment found none to keep ({self.super_weights['criterion']})")
        return {**params, "super_weights": self.super_weights["super_weights"]}

    def find_super_weights(self, params: dict[str, Any], task) -> dict[str, Any]:
        """The super weight finder and its zeroing experiment (engine.measure.super_weight); what it finds is what
        a later quantize with `keep_super_weights` keeps in floating point."""
        from int8wb.engine.measure import super_weight

        loaded = self.require_model()
        if self.layerwise:
            raise BadInput(
                "the super weight experiment zeroes weights of the model in memory: load it in memory "
                "(--offload none) to run it"
            )
        with self._phase("super weights", loaded.device):
            self.super_weights = super_weight.run(params, task, loaded)
        return self.super_weights

    def evaluate(self, params: dict[str, Any], task) -> dict[str, Any]:
        """Perplexity of the baseline and of `params["methods"]` (default: every quantized variant)."""
        from int8wb.engine.measure import evaluate

        loaded = self.require_model()
        variants = self._variants(params.get("methods"), "evaluating")
        if self.layerwise:
            return self.run_pass({"evaluate": params}, task, list(variants.values()))["evaluate"]
        return evaluate.run(params, task, loaded, variants)

    def task_accuracy(self, params: dict[str, Any], task) -> dict[str, Any]:
        """lm-evaluation-harness accuracy of the baseline and of `params["methods"]` on `params["tasks"]`
        (engine.measure.tasks), each quantized model run in memory."""
        from int8wb.engine.measure import tasks

        loaded = self.require_model()
        if self.layerwise:
            raise BadInput(tasks.WHOLE_MODEL_ONLY)
        variants = self._variants(params.get("methods"), "scoring them on tasks")
        with self._phase("task accuracy", loaded.device):
            return tasks.run(params, task, loaded, variants)

    def _variants(self, methods: Any, purpose: str) -> dict[str, Any]:
        """The quantized variants named by `methods` (all of them when None); BadInput names any not quantized yet."""
        from int8wb.engine.quant import quantize

        methods = list(self.quantized) if methods is None else quantize.check_methods(methods)
        missing = [m for m in methods if m not in self.quantized]
        if missing:
            raise BadInput(f"not quantized yet: {', '.join(missing)}; quantize before {purpose}")
        return {m: self.quantized[m] for m in methods}

    def bench_decode(self, params: dict[str, Any], task) -> dict[str, Any]:
        """Greedy decoding speed of the baseline and of `params["methods"]` (default: every quantized variant)."""
        from int8wb.engine.measure import decode

        loaded = self.require_model()
        return decode.run(params, task, loaded, self._variants(params.get("methods"), "timing their decoding"))

    def export(self, params: dict[str, Any], task) -> dict[str, Any]:
        """Write the quantized variant `params["method"]` to `params["out"]` (see engine.checkpoint.export).

        A re-opened export can be exported again under its own method.
        """
        from int8wb.engine.checkpoint import export
        from int8wb.engine.quant import quantize

        loaded = self.require_model()
        (method,) = quantize.check_methods([params.get("method")])
        variant = self.quantized.get(method)
        reopened = getattr(loaded, "quantized", None)
        if variant is None and reopened is not None and reopened.method == method:
            variant = reopened
        if variant is None:
            raise BadInput(f"not quantized yet: {method}; quantize with it before exporting")
        if self.layerwise:
            return self.run_pass({"export": params}, task, [variant])["export"]
        return export.run(params, task, loaded, variant, self.scan_result).to_payload()

    def sensitivity(self, params: dict[str, Any], task) -> dict[str, Any]:
        """The skip-list sweep of engine.measure.sensitivity on the loaded model (and its scan, for llm-int8);
        its sizes are checked against free memory (engine.model.limits) before it reads any text."""
        from int8wb.engine.measure import sensitivity
        from int8wb.engine.model.limits import check_sensitivity

        loaded = self.require_model()
        if self.layerwise:
            raise BadInput(
                "the sensitivity sweep evaluates the model once per candidate skip list: load it in memory "
                "(--offload none) to run it"
            )
        sweep = sensitivity.SweepSettings.from_params(params)
        check_sensitivity(loaded.model, sweep.tokens, sweep.window, sweep.batch_size, loaded.device)
        with self._phase("sensitivity", loaded.device):
            return sensitivity.run(params, task, loaded, self.scan_result)

    def plan_memory(self, params: dict[str, Any], task) -> dict[str, Any]:
        """GPUs needed, from `config` / `preset`, or else for the loaded model.

        For the loaded model with a scan, static llm-int8 is planned with the
        outlier columns the scan finds at `threshold` (default 6.0).
        """
        from int8wb.engine.planning import plan_memory
        from int8wb.engine.vocabulary import check_threshold

        if params.get("config") is None and params.get("preset") is None:
            params = {**params, "model": self.require_model().model}
            if self.scan_result is not None:
                threshold = check_threshold(params.get("threshold", 6.0))
                dims = self.scan_result.outlier_dims(threshold)
                params["outlier_counts"] = {name: int(len(d)) for name, d in dims.items()}
        params.pop("threshold", None)
        return plan_memory.run(params, task)

    @contextmanager
    def _phase(self, name: str, device: str):
        """Measure the memory of the block as phase `name` (CUDA peaks, or CPU resident memory)."""
        from dataclasses import asdict

        from int8wb.engine.planning.memory import MemoryRecorder

        with MemoryRecorder().phase(name, device) as record:
            yield record
        self.memory[name] = asdict(record)
