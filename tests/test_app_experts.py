"""Mixture-of-experts in the window: one aggregated heatmap row per layer, a drill-down to each expert with
the tokens it saw, and results that state the INT8 share and warn when most of the decoder stayed float."""

from __future__ import annotations

import numpy as np

from int8wb.app.view_models.results import ResultsModel, shown_columns
from int8wb.app.view_models.scan_stats import ScanStatistics
from int8wb.engine.vocabulary import FEW_EXPERT_TOKENS


def expert_payload(index, layer, expert, absmax, tokens, over):
    absmax = np.asarray(absmax, dtype=np.float32)
    return {
        "index": index,
        "names": [f"model.layers.{layer}.mlp.experts.{expert}.gate_up_proj"],
        "layer": layer,
        "kind": "expert_in",
        "absmax": absmax,
        "count_over": np.asarray(over, dtype=np.int64),
        "hist": np.ones(90, np.int64),
        "n_tokens": 1000,
        "tokens": tokens,
        "expert": expert,
        "out_features": [16],
        "final": True,
    }


def moe_stats() -> ScanStatistics:
    """Layer 0 with three experts: two busy ones and one that saw too few tokens."""
    stats = ScanStatistics()
    stats.add_layer(expert_payload(0, 0, 0, [1, 9, 2], tokens=900, over=[0, 450, 0]))
    stats.add_layer(expert_payload(1, 0, 1, [3, 1, 2], tokens=1090, over=[0, 0, 0]))
    stats.add_layer(expert_payload(2, 0, 2, [1, 20, 1], tokens=FEW_EXPERT_TOKENS - 54, over=[0, 10, 0]))
    return stats


def test_the_experts_of_a_layer_share_one_row_that_aggregates_them():
    stats = moe_stats()
    assert stats.row_keys == [("expert_in", 0)] and stats.rows_filled == 1
    assert stats.absmax_grid[0].tolist() == [3, 20, 2]  # the largest abs-max of any expert
    routed = 900 + 1090 + FEW_EXPERT_TOKENS - 54
    np.testing.assert_allclose(stats.share_grid[0], [0, 460 / routed, 0], rtol=1e-6)  # over the routed tokens
    assert "largest of its experts" in stats.row_label(0)
    assert len(stats.all_absmax()) == 9  # every expert pays for its own outlier columns


def test_drill_down_gives_each_expert_and_flags_the_unreliable_ones():
    rows = moe_stats().experts_at(0)
    assert rows.experts.tolist() == [0, 1, 2] and rows.tokens.tolist() == [900, 1090, FEW_EXPERT_TOKENS - 54]
    assert rows.few.tolist() == [False, False, True]
    assert rows.absmax[2].tolist() == [1, 20, 1]
    assert rows.share[0, 1] == 0.5
    dense = ScanStatistics()
    dense.add_layer({**expert_payload(0, 0, 0, [1, 2, 3], 10, [0, 0, 0]), "kind": "mlp_in", "expert": None})
    assert dense.experts_at(0) is None


def test_experts_panel_opens_on_an_aggregated_row(qtbot):
    from int8wb.app.view_models.threshold import ThresholdModel
    from int8wb.app.views.heatmap import HeatmapView

    stats = moe_stats()
    view = HeatmapView(stats, ThresholdModel(stats, threshold=6.0))
    qtbot.addWidget(view)
    view.show()
    assert view.experts.show_row(0, (-1.0, 2.0))
    assert view.experts.isVisible()
    title = view.experts.title.text()
    assert "3 experts" in title and "Experts 2 (marked !)" in title and "unreliable" in title
    assert view.experts.overlay.image.tolist() == [[0, 1, 0], [0, 0, 0], [0, 1, 0]]
    assert "(fewer than 64: unreliable)" in view.experts.describe_cell(2, 1)
    assert "▲ outlier" in view.experts.describe_cell(2, 1)


def test_results_state_the_share_and_warn():
    model = ResultsModel()
    model.add_quantized(
        {
            "models": [
                {
                    "method": "vectorwise",
                    "int8_bytes": 10,
                    "float_bytes": 5,
                    "total_bytes": 15,
                    "outlier_dims": 0,
                    "int8_share": 0.331,
                    "kept_float": [
                        {
                            "modules": "model.layers.*.mlp.experts",
                            "count": 2,
                            "layer_type": "GptOssExperts",
                            "reason": "unsupported",
                            "why": "not supported: GptOssExperts in model.layers.*.mlp.experts",
                            "weights": 49152,
                        }
                    ],
                    "warnings": ["vectorwise: only 33.1% of the decoder's matrix weights are stored as INT8; ..."],
                }
            ]
        }
    )
    row = model.rows["vectorwise"]
    headers = [column.header for column in shown_columns()]
    assert row.cells()[headers.index("INT8 share")] == "33.1%"
    note = model.coverage_note()
    assert note.startswith("INT8 share: of the decoder's matrix weights")
    assert "Warning: vectorwise: only 33.1%" in note
    model.rows["vectorwise"].warnings = []
    assert "not supported: GptOssExperts in model.layers.*.mlp.experts" in model.coverage_note()
