"""One client's working state in the engine: the loaded model, its scan, its quantized variants.

`Session.handle(request_type, params, task)` is what the server calls for every
job request; the CLI calls the same methods. Results are dicts of JSON-able
values and numpy arrays.
"""

from __future__ import annotations

from typing import Any, Callable

from engine.errors import BadInput


class Session:
    def __init__(self) -> None:
        self.loaded = None  # engine.loading.LoadedModel
        self.scan_result = None  # engine.scan.ScanResult
        self.quantized: dict[str, Any] = {}  # method -> engine.quantize.QuantizedModel

    def handlers(self) -> dict[str, Callable[[dict[str, Any], Any], dict[str, Any]]]:
        """Request type -> method; the server's job table."""
        return {
            "load_model": self.load_model,
            "scan": self.scan,
            "quantize": self.quantize,
            "evaluate": self.evaluate,
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
        from engine import loading

        loaded = loading.load(params, task)
        self.loaded, self.scan_result, self.quantized = loaded, None, {}
        return loaded.describe()

    def scan(self, params: dict[str, Any], task) -> dict[str, Any]:
        from engine import scan

        self.scan_result = scan.run(params, task, self.require_model())
        return self.scan_result.to_payload()

    def quantize(self, params: dict[str, Any], task) -> dict[str, Any]:
        """Quantize with each of `params["methods"]`; a method quantized again replaces its old variant."""
        from engine import quantize

        loaded = self.require_model()
        methods = quantize.check_methods(params.get("methods"))
        summaries = []
        for i, method in enumerate(methods):
            step = task.slice(i / len(methods), (i + 1) / len(methods))
            variant = quantize.run({**params, "method": method}, step, loaded, self.scan_result)
            self.quantized[method] = variant
            summaries.append(variant.summary())
        return {"models": summaries}

    def evaluate(self, params: dict[str, Any], task) -> dict[str, Any]:
        """Perplexity of the baseline and of `params["methods"]` (default: every quantized variant)."""
        from engine import evaluate, quantize

        loaded = self.require_model()
        methods = params.get("methods")
        methods = list(self.quantized) if methods is None else quantize.check_methods(methods)
        missing = [m for m in methods if m not in self.quantized]
        if missing:
            raise BadInput(f"not quantized yet: {', '.join(missing)}; quantize before evaluating")
        return evaluate.run(params, task, loaded, {m: self.quantized[m] for m in methods})
