"""A `Term` (app.view_models.plan) and its children as tree items: label, value, note; top level in bold."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHeaderView, QTreeWidget, QTreeWidgetItem

from int8wb.app.view_models.plan import Term


def term_tree(headers: tuple[str, str, str]) -> QTreeWidget:
    """A three-column tree for terms, the first two columns sized to their contents."""
    tree = QTreeWidget()
    tree.setColumnCount(3)
    tree.setHeaderLabels(list(headers))
    tree.setRootIsDecorated(True)
    tree.setUniformRowHeights(True)
    header = tree.header()
    header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(True)
    return tree


def show_terms(tree: QTreeWidget, terms: list[Term]) -> None:
    """Replace the tree's items with `terms`, all expanded."""
    tree.clear()
    for term in terms:
        tree.addTopLevelItem(tree_item(term))
    tree.expandAll()


def tree_item(term: Term) -> QTreeWidgetItem:
    item = QTreeWidgetItem([term.label, term.value_text, term.note])
    item.setTextAlignment(1, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    for column in range(3):
        item.setToolTip(column, term.help or term.note)
    if term.level == 0:
        font = item.font(0)
        font.setBold(True)
        item.setFont(0, font)
        item.setFont(1, font)
    for child in term.children:
        item.addChild(tree_item(child))
    return item
