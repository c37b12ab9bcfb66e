"""A small live line plot drawn with QPainter: no plotting dependency, and cheap enough to redraw on
every training step without stalling napari's main thread."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

COLOURS = ["#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#fff176", "#90a4ae"]


class LivePlot(QWidget):
    """Series of (step, value) points, each scaled to the plot's own range (losses and Dice share one view)."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = title
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def add(self, step: float, values: dict[str, float], prefix: str = "") -> None:
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                self.series.setdefault(prefix + name, []).append((float(step), float(value)))
        self.update()

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        p.setPen(QColor("#d0d0d0"))
        p.drawText(6, 14, self.title or "")
        left, top, right, bottom = 6, 20, w - 6, h - 8 - 14 * ((len(self.series) + 1) // 2)
        p.setPen(QPen(QColor("#555"), 1))
        p.drawRect(left, top, right - left, max(bottom - top, 1))
        steps = [s for pts in self.series.values() for s, _ in pts]
        if steps:
            s0, s1 = min(steps), max(steps)
            for k, (name, pts) in enumerate(self.series.items()):
                colour = QColor(COLOURS[k % len(COLOURS)])
                values = [v for _, v in pts]
                lo, hi = min(values), max(values)
                span, sspan = (hi - lo) or 1.0, (s1 - s0) or 1.0
                line = QPolygonF(
                    [
                        QPointF(left + (s - s0) / sspan * (right - left), bottom - (v - lo) / span * (bottom - top))
                        for s, v in pts[-2000:]
                    ]
                )
                p.setPen(QPen(colour, 1.5))
                p.drawPolyline(line)
                x, y = 6 + (k % 2) * (w // 2), bottom + 14 * (k // 2 + 1)
                p.drawText(x, y, f"{name} {values[-1]:.4g}")  # each line spans the plot's height: its own range
        else:
            p.setPen(QColor("#888"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "losses appear here while training runs")
        p.end()
