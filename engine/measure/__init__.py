"""Measuring a quantized model: perplexity, divergence, decoding speed, task accuracy, sensitivity, super weights."""
