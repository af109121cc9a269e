"""Where it hurts, token by token: the evaluation text shaded by a method's KL divergence, observing `ResultsModel`.

Each token's background is as red as the chosen method's KL divergence there (app.view_models.token_divergence);
hovering a token shows the floating-point model's and the method's top next tokens with their probabilities.
The list beside the text holds the worst tokens; clicking one shows it in the text.
"""

from __future__ import annotations

import bisect

from PySide6.QtCore import QEvent, QObject, QPoint, Qt
from PySide6.QtGui import QColor, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QTextEdit,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from int8wb.app.view_models.results import ResultsModel
from int8wb.app.view_models.token_divergence import TokenDivergence
from int8wb.app.views.empty_state import EmptyState

EMPTY_TEXT = (
    "After a Run, the evaluation text appears here with each token shaded by how far the chosen method's "
    "prediction of it moved from the floating-point model's (KL divergence); hover a token for both models' "
    "top 5 next tokens."
)
HURT_COLOR = (229, 107, 111)  # the shade of the worst tokens; lighter ones blend towards the background
POSITION_ROLE = Qt.ItemDataRole.UserRole


class TokenView(QWidget):
    def __init__(self, model: ResultsModel, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.data: TokenDivergence | None = None
        self.starts: list[int] = []  # character offset of each token in the document
        self.positions: list[int | None] = []  # the prediction behind each token
        self.method = QComboBox()
        self.method.setToolTip("The method whose divergence from the floating-point model shades the text")
        self.method.currentTextChanged.connect(self._show_method)
        self.summary = QLabel("")
        self.summary.setObjectName("info")
        self.text = QTextEdit()
        self.text.setReadOnly(True)
        self.text.viewport().installEventFilter(self)
        self.text.viewport().setMouseTracking(True)
        self.worst = QListWidget()
        self.worst.setToolTip("The tokens with the largest KL divergence, largest first: click one to see it")
        self.worst.itemClicked.connect(self._go_to)

        controls = QHBoxLayout()
        controls.addWidget(QLabel("Method:"))
        controls.addWidget(self.method)
        controls.addWidget(self.summary, 1)
        worst_box = QWidget()
        worst_layout = QVBoxLayout(worst_box)
        worst_layout.setContentsMargins(0, 0, 0, 0)
        worst_layout.addWidget(QLabel("Worst tokens (KL, nats)"))
        worst_layout.addWidget(self.worst, 1)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.text)
        splitter.addWidget(worst_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addWidget(splitter, 1)
        self.empty = EmptyState(content, EMPTY_TEXT)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.empty)
        model.subscribe(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        if self.model.tokens is self.data:
            return
        self.data = self.model.tokens
        self.empty.set_empty(self.data is None)
        self.method.blockSignals(True)
        self.method.clear()
        if self.data is not None:
            self.method.addItems(self.data.method_names())
        self.method.blockSignals(False)
        self._show_method(self.method.currentText())

    def _show_method(self, method: str) -> None:
        self.text.clear()
        self.worst.clear()
        self.starts, self.positions = [], []
        if self.data is None or not method:
            self.summary.setText("")
            return
        kl = self.data.kl(method)
        self.summary.setText(
            f"mean KL {float(kl.mean()):.4f} nats over {kl.size:,} tokens; the reddest are among its worst 1%"
        )
        cursor = QTextCursor(self.text.document())
        base = self.text.palette().base().color()
        for token, shade in zip(self.data.tokens(), self.data.shades(method)):
            self.starts.append(cursor.position())
            self.positions.append(token.position)
            char_format = QTextCharFormat()
            char_format.setBackground(_blend(base, shade))
            cursor.insertText(token.text, char_format)
        self.text.moveCursor(QTextCursor.MoveOperation.Start)
        for worst in self.data.worst(method):
            item = QListWidgetItem(worst.label)
            item.setData(POSITION_ROLE, worst.index)
            item.setToolTip(self.data.hover(method, worst.position))
            self.worst.addItem(item)

    def token_at(self, point: QPoint) -> int | None:
        """The index of the token under `point` (viewport coordinates), or None off the text."""
        if not self.starts:
            return None
        offset = self.text.cursorForPosition(point).position()
        return max(0, bisect.bisect_right(self.starts, offset) - 1)

    def tooltip_at(self, point: QPoint) -> str:
        """What hovering `point` shows: both models' top next tokens for the token there."""
        index = self.token_at(point)
        if index is None or self.data is None:
            return ""
        position = self.positions[index]
        if position is None:
            return "The first token of an evaluation window: context only, nothing predicted it."
        return self.data.hover(self.method.currentText(), position)

    def point_of(self, index: int) -> QPoint:
        """A point inside token `index` (viewport coordinates)."""
        cursor = QTextCursor(self.text.document())
        cursor.setPosition(self.starts[index] + 1 if self._length(index) > 1 else self.starts[index])
        return self.text.cursorRect(cursor).center()

    def _length(self, index: int) -> int:
        end = self.starts[index + 1] if index + 1 < len(self.starts) else self.text.document().characterCount() - 1
        return end - self.starts[index]

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if watched is self.text.viewport() and event.type() == QEvent.Type.ToolTip:
            text = self.tooltip_at(event.pos())
            if text:
                QToolTip.showText(event.globalPos(), text, self.text.viewport())
            else:
                QToolTip.hideText()
            return True
        return super().eventFilter(watched, event)

    def _go_to(self, item: QListWidgetItem) -> None:
        index = int(item.data(POSITION_ROLE))
        cursor = QTextCursor(self.text.document())
        cursor.setPosition(self.starts[index])
        cursor.setPosition(self.starts[index] + self._length(index), QTextCursor.MoveMode.KeepAnchor)
        self.text.setTextCursor(cursor)
        self.text.ensureCursorVisible()


def _blend(base: QColor, shade: float) -> QColor:
    """The background towards `HURT_COLOR` by `shade` (0 to 1)."""
    r, g, b = HURT_COLOR
    return QColor(
        round(base.red() + (r - base.red()) * shade),
        round(base.green() + (g - base.green()) * shade),
        round(base.blue() + (b - base.blue()) * shade),
    )
