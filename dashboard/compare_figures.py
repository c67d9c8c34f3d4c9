"""Figures comparing the masks of two runs — pure functions over :func:`merging.maskdiff.mask_difference`'s
small table (task, layer, kind, total, both, only_a, only_b, neither), no Gradio.

Fractions are of the group's task-weights (a layer of n weights compared over T tasks counts n·T).
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from merging.maskdiff import summarize

from .figures import _figure, _styled, layer_rank

ONLY_A, ONLY_B = "#1f77b4", "#ff7f0e"


def _by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`summarize` by layer, in network order."""
    layers = summarize(table, "layer")
    return layers.iloc[sorted(range(len(layers)), key=lambda i: layer_rank(str(layers["layer"].iloc[i])))]


def _diverging(summary: pd.DataFrame, key: str, label_a: str, label_b: str, axis: str, legend: bool) -> list:
    x = summary[key].astype(str).tolist()
    hover = "%{x}: %{customdata:,} weights (%{text})<extra>%{fullData.name}</extra>"
    traces = []
    for column, sign, label, color in (("only_a", 1, label_a, ONLY_A), ("only_b", -1, label_b, ONLY_B)):
        fraction = 100 * summary[f"{column}_fraction"]
        traces.append(go.Bar(x=x, y=(sign * fraction).round(4).tolist(), name=f"kept only by {label}",
                             marker_color=color, customdata=summary[column].tolist(), showlegend=legend,
                             legendgroup=column, text=[f"{v:.2f}% of the group" for v in fraction],
                             textposition="none", hovertemplate=hover, xaxis=axis, yaxis=axis.replace("x", "y")))
    return traces


def mask_difference_bars(table: pd.DataFrame, label_a: str, label_b: str, title: str = "") -> go.Figure:
    """Per layer (left, network order) and per parameter kind (right): the % of weights run A's mask keeps and
    run B's drops (up), and the % B keeps and A drops (down); hover gives the counts."""
    layers = _by_layer(table)
    kinds = summarize(table, "kind")
    fig = _figure(*_diverging(layers, "layer", label_a, label_b, "x", True),
                  *_diverging(kinds, "kind", label_a, label_b, "x2", False))
    fig.update_layout(barmode="relative", xaxis={"domain": [0, 0.68], "type": "category"},
                      xaxis2={"domain": [0.76, 1], "type": "category", "title": {"text": "parameter kind"}},
                      yaxis={"zeroline": True}, yaxis2={"anchor": "x2", "zeroline": True},
                      legend={"orientation": "h", "y": -0.25})
    total = summarize(table.assign(all="all"), "all").iloc[0]
    return _styled(fig, title or f"Where the masks differ: {100 * total['differ_fraction']:.2f}% of weights "
                   f"({total['only_a']:,} kept only by A, {total['only_b']:,} only by B)", "layer",
                   "% kept only by A (↑) / only by B (↓)", height=420)


def difference_numbers(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as numbers: counts and fractions (%) per layer (network order), rounded for display."""
    out = _by_layer(table).reset_index(drop=True)
    for column in [c for c in out.columns if c.endswith("_fraction")]:
        out[column.replace("_fraction", " %")] = (100 * out.pop(column)).round(3)
    return out
