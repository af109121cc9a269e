"""The quantization methods and `Int8Linear`, the calibration scan, and perplexity evaluation."""
