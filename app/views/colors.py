"""Colours shared by the views: the heatmap colour map, the outlier highlight, one colour per input kind; and
what the grid maps share besides (their image items, the cell under the pointer, the rows' colour indices).

The error map uses the heatmap's colour map turned round (bright = low SQNR = much error), so that in
both maps bright means trouble.
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg

BACKGROUND = "#1e1f24"
FOREGROUND = "#d6d7dc"
MISSING_RGBA = (44, 45, 52, 255)  # heatmap cells not scanned (yet), or past a layer's width
OUTLIER_RGBA = (0, 229, 255, 235)  # cells over the threshold, drawn over the heatmap
THRESHOLD_PEN = pg.mkPen("#00e5ff", width=2)
KIND_COLORS = {
    "attn_in": "#f4a259",
    "attn_out": "#8cb369",
    "mlp_in": "#5b8def",
    "mlp_down": "#e56b6f",
    "expert_in": "#b48ead",
    "expert_down": "#d08770",
    "other": "#b0b0b0",
}
COLORMAP_NAME = "inferno"


def colormap() -> pg.ColorMap:
    return pg.colormap.get(COLORMAP_NAME)


def heatmap_lut() -> np.ndarray:
    """(256, 4) uint8: entry 0 is the 'missing' colour, 1..255 the colour map from low to high."""
    lut = np.empty((256, 4), dtype=np.uint8)
    lut[0] = MISSING_RGBA
    lut[1:] = colormap().getLookupTable(nPts=255, alpha=True)
    return lut


def error_colormap() -> pg.ColorMap:
    """The heatmap's colour map reversed: high SQNR dark, low SQNR bright."""
    positions, rgba = colormap().getStops(mode=pg.ColorMap.BYTE)
    return pg.ColorMap(1.0 - positions[::-1], rgba[::-1])  # a new map: the shared one stays as it is


def error_lut() -> np.ndarray:
    """(256, 4) uint8 for the error map: entry 0 'missing', 1..255 from low SQNR (bright) to high (dark)."""
    lut = heatmap_lut()
    lut[1:] = lut[1:][::-1]
    return lut


def outlier_lut() -> np.ndarray:
    """(2, 4) uint8: 0 transparent, 1 the outlier highlight."""
    return np.array([(0, 0, 0, 0), OUTLIER_RGBA], dtype=np.uint8)


def heatmap_images(plot) -> tuple[pg.ImageItem, pg.ImageItem]:
    """(colour image, outlier highlight) added to `plot`: uint8 indices drawn through the two lookup tables."""
    image = pg.ImageItem(axisOrder="row-major")
    image.setLookupTable(heatmap_lut())
    overlay = pg.ImageItem(axisOrder="row-major")
    overlay.setLookupTable(outlier_lut())
    plot.addItem(image)
    plot.addItem(overlay)
    return image, overlay


def grid_cell_at(plot: pg.PlotItem, scene_pos, shape: tuple[int, int]) -> tuple[int, int] | None:
    """(row, column) of the grid of `shape` drawn one cell per unit in `plot` under a scene position, or None
    outside it: what the maps' hover and click read."""
    if not plot.sceneBoundingRect().contains(scene_pos):
        return None
    point = plot.getViewBox().mapSceneToView(scene_pos)
    row, column = int(math.floor(point.y())), int(math.floor(point.x()))
    rows, columns = shape
    return (row, column) if 0 <= row < rows and 0 <= column < columns else None


def index_rows(values: np.ndarray, low: float, high: float, log10: bool = False) -> np.ndarray:
    """Values (or their log10) -> uint8 colour indices 1..255 (0 for NaN); one row or many.

    float32 arithmetic in place, one temporary for the whole grid; the log10 is
    taken as a natural log (vectorized for float32, log10 is not) folded into
    the scale.
    """
    step = 254.0 / (high - low)
    if log10:
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = np.log(values, dtype=np.float32)
        scaled *= np.float32(step / math.log(10.0))
    else:
        scaled = np.multiply(values, np.float32(step), dtype=np.float32)
    scaled -= np.float32(low * step)
    np.clip(scaled, 0.0, 254.0, out=scaled)  # NaN stays NaN
    scaled += 1.0
    scaled[np.isnan(scaled)] = 0.0
    index = np.empty(scaled.shape, dtype=np.uint8)
    np.copyto(index, scaled, casting="unsafe")
    return index
