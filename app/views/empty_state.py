"""A plot that says what it will show, instead of empty axes, until its data arrive."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QLabel, QStackedWidget, QWidget

EXPLAIN_LINK = "explain"
LINK_COLOR = "#00e5ff"


class EmptyState(QStackedWidget):
    """`content` once it has data; before, one line of text saying what fills it, and a link to the explanation."""

    sig_explain = Signal()

    def __init__(self, content: QWidget, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.content = content
        self.message = QLabel()
        self.message.setObjectName("emptyState")
        self.message.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.message.setWordWrap(True)
        self.message.setTextFormat(Qt.TextFormat.RichText)
        self.message.linkActivated.connect(lambda link: self.sig_explain.emit() if link == EXPLAIN_LINK else None)
        self.addWidget(self.message)
        self.addWidget(content)
        self.set_text(text)

    def set_text(self, text: str) -> None:
        if getattr(self, "text", None) == text:
            return
        self.text = text
        link = f"<a href='{EXPLAIN_LINK}' style='color:{LINK_COLOR}'>What am I looking at?</a>"
        self.message.setText(f"{text}<br><br>{link}")

    def set_empty(self, empty: bool) -> None:
        self.setCurrentWidget(self.message if empty else self.content)

    @property
    def is_empty(self) -> bool:
        return self.currentWidget() is self.message
