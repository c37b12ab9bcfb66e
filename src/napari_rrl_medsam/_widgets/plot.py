"""A small live plot drawn with QPainter: no plotting dependency, and cheap enough to redraw on every training step
without stalling napari's main thread.

One panel per training stage (registration and co-training have losses of different kinds and sizes), each with
two axes that carry their values: the losses on the left, on one shared scale, and validation Dice on the right,
from 0 to 1. Every point is drawn, so a single validation point shows; series have names a user knows.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

COLOURS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#90a4ae"]
# what the engines call their figures -> what the plot calls them
NAMES = {
    "loss": "loss",
    "ncc": "image similarity (NCC)",
    "smooth": "smoothness",
    "dice": "Dice coupling",
    "general": "general branch",
    "medical": "medical branch",
    "consistency": "consistency",
    "mse": "MSE",
    "cosine": "cosine similarity",
    "val_dice": "validation Dice, final",
    "val_dice_general": "validation Dice, auto-prompt",
    "val_dice_registration": "validation Dice, registration",
}
PANEL_HEIGHT, LEGEND_LINE = 130, 14


def display_name(name: str) -> str:
    """The words a series is shown with."""
    return NAMES.get(name, name.replace("_", " "))


def is_dice(name: str) -> bool:
    """Validation figures share the right-hand 0-1 axis."""
    return name.startswith("val_")


class LivePlot(QWidget):
    """(step, value) series per stage; `series` holds every series by name across stages (for tests and tools)."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.stages: dict[str, dict[str, list[tuple[float, float]]]] = {}
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._resize()

    def add(self, step: float, values: dict[str, float], stage: str = "") -> None:
        """Add one step's figures to `stage`'s panel (a new stage opens a new panel)."""
        panel = self.stages.setdefault(stage, {})
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                panel.setdefault(name, []).append((float(step), float(value)))
                self.series.setdefault(name, []).append((float(step), float(value)))
        self._resize()
        self.update()

    def clear(self) -> None:
        self.series.clear()
        self.stages.clear()
        self._resize()
        self.update()

    def _resize(self) -> None:
        self.setMinimumHeight(max(len(self.stages), 1) * PANEL_HEIGHT + 20)

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(0, 0, self.width(), self.height(), QColor("#262930"))
        p.setPen(QColor("#d0d0d0"))
        p.drawText(6, 14, self.title or "")
        if not self.stages:
            p.setPen(QColor("#888"))
            p.drawText(
                self.rect(), Qt.AlignmentFlag.AlignCenter, "losses and validation Dice appear here while training"
            )
        height = (self.height() - 20) / max(len(self.stages), 1)
        for i, (stage, panel) in enumerate(self.stages.items()):
            _draw_panel(p, QRectF(0, 20 + i * height, self.width(), height), stage, panel)
        p.end()


def _draw_panel(p: QPainter, box: QRectF, stage: str, panel: dict) -> None:
    """One stage: title, losses against the left axis, Dice against the right (0-1), steps below, a legend."""
    rows = (len(panel) + 1) // 2
    left, right = box.left() + 56, box.right() - 34
    top, bottom = box.top() + 18, box.bottom() - 18 - LEGEND_LINE * rows
    if bottom - top < 10:
        return
    p.setPen(QColor("#d0d0d0"))
    p.drawText(QPointF(box.left() + 6, box.top() + 13), stage)
    p.setPen(QPen(QColor("#555"), 1))
    p.drawRect(QRectF(left, top, right - left, bottom - top))
    steps = [s for pts in panel.values() for s, _ in pts]
    s0, s1 = min(steps), max(steps)
    losses = [v for name, pts in panel.items() if not is_dice(name) for _, v in pts]
    lo, hi = (min(losses), max(losses)) if losses else (0.0, 1.0)
    lo, hi = (lo - 0.5, hi + 0.5) if hi == lo else (lo, hi)
    _axes(p, left, right, top, bottom, (s0, s1), (lo, hi), bool(losses), any(is_dice(n) for n in panel))
    for k, (name, pts) in enumerate(panel.items()):
        low, high = (0.0, 1.0) if is_dice(name) else (lo, hi)

        def at(s: float, v: float, low=low, high=high) -> QPointF:
            x = left + (s - s0) / ((s1 - s0) or 1.0) * (right - left)
            return QPointF(x, bottom - (v - low) / (high - low) * (bottom - top))

        colour = QColor(COLOURS[k % len(COLOURS)])
        p.setPen(QPen(colour, 1.5))
        p.drawPolyline(QPolygonF([at(s, v) for s, v in pts[-2000:]]))
        if is_dice(name) or len(pts) == 1:  # evaluations are few: each one a dot
            p.setBrush(colour)
            for s, v in pts[-200:]:
                p.drawEllipse(at(s, v), 2.5, 2.5)
            p.setBrush(Qt.BrushStyle.NoBrush)
        x = box.left() + 6 + (k % 2) * (box.width() / 2)
        y = bottom + 18 + LEGEND_LINE * (k // 2)
        p.drawText(QPointF(x, y + 10), f"{display_name(name)} {pts[-1][1]:.3g}")


def _axes(p: QPainter, left, right, top, bottom, steps, losses, show_losses: bool, show_dice: bool) -> None:
    """Tick values: losses on the left, Dice 0-1 on the right, the first and last step below."""
    p.setPen(QColor("#aaa"))
    font = p.font()
    font.setPointSizeF(max(font.pointSizeF() - 1, 6))
    p.setFont(font)
    for frac in (0.0, 0.5, 1.0):
        y = bottom - frac * (bottom - top)
        if show_losses:
            value = losses[0] + frac * (losses[1] - losses[0])
            p.drawText(QRectF(left - 56, y - 7, 52, 14), Qt.AlignmentFlag.AlignRight, f"{value:.3g}")
        if show_dice:
            p.drawText(QRectF(right + 4, y - 7, 30, 14), Qt.AlignmentFlag.AlignLeft, f"{frac:.1f}")
    p.drawText(QRectF(left - 20, bottom + 1, 60, 14), Qt.AlignmentFlag.AlignLeft, f"step {steps[0]:.0f}")
    p.drawText(QRectF(right - 60, bottom + 1, 60, 14), Qt.AlignmentFlag.AlignRight, f"{steps[1]:.0f}")
