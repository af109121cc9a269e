"""The workbench engine: model loading, scan, quantization, evaluation and export.

Importing this package is cheap on purpose: the GUI imports `engine.protocol`
and `engine.client`, and its window must not wait for torch. Heavy modules
(torch, transformers) are imported by the submodules that need them.
"""

__version__ = "0.1.0"
