"""Sweep figures — pure functions of small tables: mean accuracy over a 1-D grid (several methods or sweeps
overlaid, the best point of each starred), a 2-D grid as a heatmap, and the θ0 / individual references.

The value axis is never autoscaled to the swept values alone (:func:`value_range`): the y axis of the lines and
the colour scale of the heatmap span at least from the θ0 (pretrained) mean to the individual (fine-tuned) mean,
widened to take in every value, padded by 5 % of that span, and at least ``MIN_SPAN`` = 10 points wide.  A
0.5-point difference between two grid points therefore looks like 0.5 points of the pretrained → fine-tuned gap,
not like the whole plot.  Means are over the sweep's tasks, in percent; normalized accuracy is accuracy ÷ the
task's fine-tuned accuracy on the same split (Ilharco et al., ICLR 2023).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from .figures import _figure, _styled, placeholder
from .history import _short
from .sweeps import SweepRecord, symbol

MIN_SPAN = 10.0  # percentage points: the narrowest value axis
PAD = 0.05  # of the span, on each side
REFERENCE_STYLE = {"pretrained": ("θ0 (pretrained)", "#7f7f7f", "dash"),
                   "individual": ("individual (fine-tuned)", "#1f77b4", "dot")}
METRICS = {"accuracy": "mean accuracy (%)", "normalized": "mean normalized accuracy (% of fine-tuned)"}
STAR = {"symbol": "star", "size": 16, "color": "gold", "line": {"color": "black", "width": 1}}


def value_range(values: Sequence[float], levels: Mapping[str, float] = (), min_span: float = MIN_SPAN,
                pad: float = PAD) -> tuple[float, float]:
    """(low, high) in percent: the values and the reference levels, padded by ``pad`` of their span, at least
    ``min_span`` wide (widened about the middle), never below 0 (see the module docstring)."""
    points = [float(v) for v in values] + [float(v) for v in dict(levels).values()]
    if not points:
        return 0.0, 100.0
    low, high = min(points), max(points)
    span = max(high - low, 0.0)
    low, high = low - pad * span, high + pad * span
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    if low < 0:
        low, high = 0.0, high - low
    return low, high


def reference_levels(references: Mapping[str, Mapping[str, float]], tasks: Sequence[str],
                     metric: str = "accuracy") -> dict[str, float]:
    """Mean θ0 and individual level over ``tasks`` in percent: accuracy, or normalized (individual = 100 %)."""
    levels = {}
    individual = references.get("individual", {})
    for model in ("pretrained", "individual"):
        accuracy = references.get(model, {})
        if not tasks or not all(t in accuracy for t in tasks):
            continue
        if metric == "normalized":
            if not all(individual.get(t) for t in tasks):
                continue
            values = [accuracy[t] / individual[t] for t in tasks]
        else:
            values = [accuracy[t] for t in tasks]
        levels[model] = 100 * sum(values) / len(values)
    return levels


def _add_levels(fig: go.Figure, levels: Mapping[str, float]) -> None:
    for model, level in levels.items():
        name, color, dash = REFERENCE_STYLE[model]
        fig.add_shape(type="line", x0=0, x1=1, xref="paper", y0=level, y1=level, yref="y",
                      line={"color": color, "dash": dash, "width": 2})
        fig.add_annotation(x=1, xref="paper", y=level, yref="y", xanchor="right", yanchor="bottom", showarrow=False,
                           text=f"{name} {level:.1f} %", font={"color": color})


def sweep_lines(means: pd.DataFrame, x: str, levels: Mapping[str, float] = (), best: Mapping[str, object] = (),
                metric: str = "accuracy", title: str = "") -> go.Figure:
    """One line per series (a method, or a stored sweep) over ``x``; ``means`` has columns series, x, value (a
    fraction); ``best`` maps a series to its best x (starred); ``levels``: the θ0 / individual lines in percent."""
    fig = _figure()
    best = dict(best)
    for series, rows in means.groupby("series", sort=False):
        rows = rows.sort_values("x")
        fig.add_trace(go.Scatter(x=rows["x"], y=100 * rows["value"], mode="lines+markers", name=str(series),
                                 hovertemplate=f"{symbol(x)} = %{{x}}: %{{y:.2f}} %<extra>{series}</extra>"))
        if series in best:
            at = rows[rows["x"] == best[series]]
            fig.add_trace(go.Scatter(x=at["x"], y=100 * at["value"], mode="markers", marker=STAR, showlegend=False,
                                     hovertemplate=f"best {symbol(x)} = %{{x}}: %{{y:.2f}} %<extra>{series}</extra>"))
    _add_levels(fig, levels)
    fig.update_yaxes(range=list(value_range(100 * means["value"], levels)))
    ticks = sorted(set(means["x"]))
    if len(ticks) <= 12:
        fig.update_xaxes(tickvals=ticks, ticktext=[_short(t) for t in ticks])
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return _styled(fig, title or f"Sweep over {symbol(x)}", symbol(x), METRICS[metric], height=420)


def sweep_heatmap(means: pd.DataFrame, x: str, y: str, x_values: Sequence, y_values: Sequence,
                  levels: Mapping[str, float] = (), best: Mapping[str, object] | None = None,
                  metric: str = "accuracy", title: str = "") -> go.Figure:
    """A 2-D grid: ``means`` (columns x, y, value as a fraction) as cells in grid order, the colour scale by
    :func:`value_range` with the θ0 and individual levels marked on the colour bar, each cell's value written
    in it, the best point (``best``: {x: …, y: …}) starred."""
    grid = means.pivot_table(index=y, columns=x, values="value", sort=False).reindex(index=list(y_values),
                                                                                     columns=list(x_values))
    z = 100 * grid.to_numpy()
    xs, ys = [_short(v) for v in x_values], [_short(v) for v in y_values]
    low, high = value_range([v for v in z.ravel() if v == v], levels)
    marks: dict[float, list[str]] = {}
    for model, level in levels.items():  # θ0 and individual on the colour bar (one mark when they coincide)
        marks.setdefault(round(level, 1), []).append(REFERENCE_STYLE[model][0])
    plain_ticks = [low + (high - low) * i / 4 for i in range(5)]
    ticks = {round(t, 1): f"{t:.1f}" for t in plain_ticks
             if all(abs(t - m) > 0.06 * (high - low) for m in marks)}  # no plain tick under a reference label
    ticks.update({m: f"{' = '.join(names)} {m:.1f}" for m, names in marks.items()})
    cells = [[v if v == v else None for v in row] for row in z.tolist()]  # plain lists: readable JSON
    fig = _figure(go.Heatmap(z=cells, x=xs, y=ys, zmin=low, zmax=high, colorscale="Viridis",
                             text=[[f"{v:.1f}" if v == v else "" for v in row] for row in z], texttemplate="%{text}",
                             colorbar={"title": {"text": "%"}, "tickvals": list(ticks),
                                       "ticktext": list(ticks.values())},
                             hovertemplate=f"{symbol(x)} = %{{x}}, {symbol(y)} = %{{y}}: %{{z:.2f}} %"
                                           "<extra></extra>"))
    if best is not None:
        fig.add_trace(go.Scatter(x=[_short(best[x])], y=[_short(best[y])], mode="markers", marker=STAR,
                                 name="best", showlegend=False,
                                 hovertemplate=f"best: {symbol(x)} = %{{x}}, {symbol(y)} = %{{y}}<extra></extra>"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=xs)
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=ys)
    return _styled(fig, title or f"{METRICS[metric]} over {symbol(x)} × {symbol(y)}", symbol(x), symbol(y),
                   height=max(380, 40 * len(ys) + 160))


def point_means(table: pd.DataFrame, names: Sequence[str], metric: str = "accuracy") -> pd.DataFrame:
    """Mean of ``metric`` over the tasks at each (method, point), in grid order."""
    return table.groupby(["method", *names], sort=False, as_index=False)[metric].mean().rename(
        columns={metric: "value"})


def sweep_figure(record: SweepRecord, metric: str = "accuracy") -> go.Figure:
    """A stored sweep's figure: lines for a 1-D grid (one per method), a heatmap for a 2-D grid."""
    names = list(record.grid)
    table = record.table()
    if table.empty or len(names) > 2:
        return placeholder("nothing to draw" if table.empty else "only 1-D and 2-D sweeps are drawn")
    means = point_means(table, names, metric)
    levels = reference_levels(record.references, record.tasks, metric)
    bests = record.bests()
    if len(names) == 1:
        titles = dict(zip(record.methods, record.titles))
        means["series"] = [titles.get(m, m) for m in means["method"]]
        means = means.rename(columns={names[0]: "x"})
        best = {titles.get(m, m): b.point[names[0]] for m, b in bests.items()}
        return sweep_lines(means, names[0], levels, best, metric,
                           f"{METRICS[metric].capitalize()} over {symbol(names[0])} ({record.split} split)")
    method = record.methods[0]
    best = bests.get(method)
    return sweep_heatmap(means[means["method"] == method], names[0], names[1], record.grid[names[0]],
                         record.grid[names[1]], levels, best.point if best else None, metric,
                         f"{record.titles[0]}: {METRICS[metric]} ({record.split} split)")
