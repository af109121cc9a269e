"""Scan statistics as the engine sends them (`scan_layer` payloads), made up for the GUI's tests."""

from __future__ import annotations

import numpy as np


def layer_payload(index, layer, kind, absmax, name=None, out_features=None, n_tokens=100, names=None):
    """One input's statistics, read by the Linear `name` (or by every Linear of `names`)."""
    absmax = np.asarray(absmax, dtype=np.float32)
    names = names or [name or f"model.layers.{layer}.{kind}.{index}"]
    return {
        "index": index,
        "names": names,
        "layer": layer,
        "kind": kind,
        "absmax": absmax,
        "count_over": (absmax > 6).astype(np.int64) * 7,
        "hist": np.ones(90, np.int64),
        "n_tokens": n_tokens,
        "final": True,
        "out_features": [out_features] * len(names) if out_features is not None else None,
    }
