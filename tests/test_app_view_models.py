"""The Qt-free view models: scan statistics grid, threshold <-> fraction, memory cost, results."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from int8wb.app.view_models.results import ResultsModel, row_tooltip, shown_columns
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.app.view_models.threshold import INDEX_BYTES, ThresholdModel
from tests.support.scan_payloads import layer_payload


def test_view_models_import_neither_qt_nor_torch():
    code = (
        "import sys, int8wb.app.view_models.scan_stats, int8wb.app.view_models.threshold, int8wb.app.view_models.results; "
        "print(sorted(m for m in ('PySide6', 'torch', 'transformers', 'cupy') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    assert out.strip() == "[]"


def test_rows_group_by_kind_and_shared_inputs_fill_one_row():
    stats = ScanStatistics()
    stats.configure(2, {"attn_in": 4, "attn_out": 4, "mlp_in": 4, "mlp_down": 4})
    events = []
    stats.subscribe(lambda event, data: events.append((event, data)))
    assert stats.add_layer(layer_payload(0, 0, "attn_in", [1, 2, 3, 4], names=["l0.q", "l0.k"])) == 0
    assert stats.add_layer(layer_payload(1, 0, "attn_in", [1, 2, 3, 4], name="l0.x")) is None  # row already filled
    assert stats.add_layer(layer_payload(2, 1, "mlp_down", [9, 1, 1, 1, 1, 1, 1, 20], name="l1.down")) == 7
    assert stats.row_keys[7] == ("mlp_down", 1)
    assert stats.absmax_grid.shape == (8, 8)  # widened for the down projection's 8 inputs
    assert np.isnan(stats.absmax_grid[0, 4:]).all()
    assert stats.rows_filled == 2
    assert [k for k, _, _ in stats.kind_spans()] == ["attn_in", "attn_out", "mlp_in", "mlp_down"]
    assert ("row", 7) in events
    assert len(stats.linears) == 4  # every Linear kept: memory is paid per Linear
    profile = stats.dimension_profile(0)
    assert list(profile) == ["attn_in", "mlp_down"]
    assert profile["mlp_down"][1].tolist() == [9.0]


def test_rows_without_configure_are_inserted_in_kind_order():
    stats = ScanStatistics()
    stats.add_layer(layer_payload(0, 0, "mlp_down", [1, 2]))
    stats.add_layer(layer_payload(1, 0, "attn_in", [3, 4]))
    stats.add_layer(layer_payload(2, 1, "attn_in", [5, 6]))
    assert stats.row_keys == [("attn_in", 0), ("attn_in", 1), ("mlp_down", 0)]
    assert stats.absmax_grid[:, 0].tolist() == [3, 5, 1]


def make_threshold_model(out_features=16):
    stats = ScanStatistics()
    rng = np.random.default_rng(0)
    for i in range(10):
        values = rng.uniform(0.1, 5.0, 64)
        values[3] = 50.0 + i  # one dimension is an outlier everywhere
        values[10 + i] = 8.0  # and one more per layer
        stats.add_layer(layer_payload(i, i, "attn_in", values, out_features=out_features))
    return ThresholdModel(stats, threshold=6.0, float_bytes=2)


def test_threshold_summary_counts_outliers_and_their_memory():
    model = make_threshold_model(out_features=16)
    summary = model.summary()
    assert summary.outlier_columns == 20 and summary.total_columns == 640
    assert summary.fraction == pytest.approx(20 / 640)
    assert summary.float_bytes == 20 * (16 * 2 + INDEX_BYTES)
    (kind,) = summary.kinds
    assert kind.dims_any_layer == 11 and kind.mean_dims_per_layer == 2 and kind.max_dims_in_a_layer == 2
    model.set_threshold(20.0)
    assert model.summary().outlier_columns == 10  # raising the threshold drops the 8.0 dimensions
    assert model.outlier_mask().sum() == 10


def test_memory_is_unknown_without_out_features():
    model = make_threshold_model(out_features=None)
    summary = model.summary()
    assert summary.float_bytes is None and len(summary.float_bytes_missing) == 10


def test_threshold_and_fraction_are_two_views_of_one_choice():
    model = make_threshold_model()
    for fraction in (0.0, 10 / 640, 20 / 640, 0.25):
        threshold = model.threshold_for_fraction(fraction)
        assert model.fraction_for_threshold(threshold) == pytest.approx(fraction, abs=1 / 640)
    assert model.threshold_for_fraction(10 / 640) >= 8.0  # the top 10 are the dimension-3 outliers
    seen = []
    model.subscribe(seen.append)
    assert model.set_fraction(20 / 640) == seen[-1]
    assert model.summary().outlier_columns == 20
    with pytest.raises(ValueError, match="between 0 and 1"):
        model.threshold_for_fraction(1.5)
    with pytest.raises(ValueError, match="finite positive"):
        model.set_threshold(-1)


def test_results_merge_quantize_evaluate_and_plan():
    results = ResultsModel()
    results.add_quantized(
        {
            "models": [
                {
                    "method": "llm-int8",
                    "int8_bytes": 100_000_000,
                    "float_bytes": 5_000_000,
                    "total_bytes": 105_000_000,
                    "outlier_dims": 1630,
                }
            ]
        }
    )
    results.add_evaluation(
        {
            "settings": {"tokens": 1020},
            "rows": [
                {
                    "method": "baseline",
                    "perplexity": 19.5,
                    "relative_change": 0.0,
                    "int8_bytes": 0,
                    "float_bytes": 5e8,
                    "total_bytes": 5e8,
                    "outlier_dims": 0,
                    "seconds": 1.0,
                },
                {"method": "llm-int8", "perplexity": 19.7, "relative_change": 0.0103, "seconds": 2.0},
            ],
        }
    )
    assert list(results.rows) == ["baseline", "llm-int8"]
    cells = dict(zip([column.header for column in shown_columns()], results.rows["llm-int8"].cells()))
    known = ("method", "perplexity", "change", "model MB", "outlier cols")
    assert [cells[header] for header in known] == ["llm-int8", "19.700", "+1.03%", "105.0", "1,630"]
    # the divergence (no float reference was sent), INT8 share, GPUs, tokens/s and bound: not known yet
    assert {header: text for header, text in cells.items() if header not in known} == dict.fromkeys(
        [header for header in cells if header not in known], "—"
    )
    tooltip = row_tooltip(results.rows["llm-int8"])
    assert "\nint8 MB: 100.0\nfloat MB: 5.0\nA100-40GB: —" in tooltip and tooltip.endswith("eval s: 2.0")
    results.add_plan(
        {
            "methods": [
                {
                    "method": "llm-int8",
                    "gpus": [{"gpu": "A100-40GB", "needed": 1}, {"gpu": "A100-80GB", "needed": None}],
                }
            ]
        }
    )
    headers = [column.header for column in shown_columns()]
    assert results.rows["llm-int8"].cells()[headers.index("A100s 40/80 GB")] == "1 / ✗"
    assert "A100-40GB: 1\nA100-80GB: does not fit" in row_tooltip(results.rows["llm-int8"])
    assert (
        results.to_csv().splitlines()[2]
        == "llm-int8,19.7,0.0103" + "," * 9 + ",100.0,5.0,105.0,1630,,1,does not fit,2.0,,"
    )  # divergence: none sent
    methods, values, baseline = results.chart_data()
    assert methods == ["baseline", "llm-int8"] and values == [19.5, 19.7] and baseline == 19.5
