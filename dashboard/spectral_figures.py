"""Plotly figures for the SVD family's tables (TSV-M, Iso-C/CTS, CART, WUDI) — pure functions, no Gradio.

Each figure carries its own layer picker (a plotly ``updatemenus`` dropdown that switches trace visibility), so
no UI wiring is needed.  Tables (see the methods' docstrings): ``spectra`` (layer, block, model, index, sigma),
``flattening`` (layer, block, stage, index, sigma), ``interference`` (layer, block, task_i, task_j, sti) and
``interference_by_depth`` (depth, block, sti, pairwise).  Importing this module registers the builders in
:data:`dashboard.figures.DEDICATED`.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from .figures import DEDICATED, _figure, _styled

SERIES_COLORS = {"merged": "#000000", "after": "#000000", "before": "#d62728"}


def _picker(labels: list[str], visibility: list[list[bool]]) -> list[dict]:
    """A dropdown whose i-th entry shows exactly the traces flagged in ``visibility[i]``."""
    buttons = [{"label": label, "method": "restyle", "args": [{"visible": visible}]}
               for label, visible in zip(labels, visibility)]
    return [{"buttons": buttons, "direction": "down", "showactive": True, "x": 1.0, "xanchor": "right",
             "y": 1.18, "yanchor": "top"}]


def _layers(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["layer"].astype(str)))


def spectrum_lines(table: pd.DataFrame, series: str = "model", title: str = "") -> go.Figure:
    """Singular values σ_i against i (log y) for every series (task / merged, or before / after), one layer at a
    time; the dropdown picks the weight matrix."""
    layers = _layers(table)
    fig = _figure()
    owner = []
    for layer in layers:
        rows = table[table["layer"].astype(str) == layer]
        for name, part in rows.groupby(series, sort=False):
            part = part.sort_values("index")
            color = SERIES_COLORS.get(str(name))
            fig.add_trace(go.Scatter(
                x=part["index"] + 1, y=part["sigma"].clip(lower=1e-12), mode="lines", name=str(name),
                visible=layer == layers[0], line={"color": color, "width": 3 if color else 1.5},
                hovertemplate=f"{name}: σ_%{{x}} = %{{y:.4g}}<extra></extra>"))
            owner.append(layer)
    fig.update_yaxes(type="log")
    fig.update_layout(updatemenus=_picker(layers, [[o == layer for o in owner] for layer in layers]),
                      legend={"orientation": "v"})
    return _styled(fig, title or "Singular value spectra per weight matrix", "index i", "σ_i (log)", height=420)


def flattening_lines(table: pd.DataFrame) -> go.Figure:
    """Iso's spectrum before (of the summed or concatenated task matrices) and after flattening."""
    return spectrum_lines(table, "stage", "Spectrum before and after isotropic flattening (Iso)")


def interference_heatmap(table: pd.DataFrame, title: str = "") -> go.Figure:
    """The T×T pairwise Singular Task Interference per weight matrix (first choice: mean over all matrices)."""
    tasks = list(dict.fromkeys(table["task_i"].astype(str)))
    views = [("mean over matrices", table)] + [(layer, table[table["layer"].astype(str) == layer])
                                                for layer in _layers(table)]
    fig = _figure()
    for i, (label, rows) in enumerate(views):
        grid = rows.pivot_table(index="task_i", columns="task_j", values="sti", aggfunc="mean", sort=False)
        grid = grid.reindex(index=tasks, columns=tasks)
        fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=tasks, y=tasks, colorscale="Viridis", visible=i == 0,
                                 colorbar={"title": {"text": "STI"}},
                                 hovertemplate="%{y} × %{x}: STI = %{z:.4g}<extra></extra>"))
    labels = [label for label, _ in views]
    fig.update_layout(updatemenus=_picker(labels, [[j == i for j in range(len(views))] for i in range(len(views))]))
    fig.update_xaxes(type="category")
    fig.update_yaxes(autorange="reversed", type="category")
    return _styled(fig, title or "Singular task interference between task pairs (TSV)", "task", "task",
                   height=440)


def interference_depth(table: pd.DataFrame, title: str = "") -> go.Figure:
    """STI by depth: the paper's all-task STI (mean over a block's matrices) and the mean pairwise STI."""
    fig = _figure()
    for column, name in (("sti", "all tasks"), ("pairwise", "task pairs (mean)")):
        if column in table:
            fig.add_trace(go.Scatter(x=table["block"].astype(str), y=table[column], mode="lines+markers",
                                     name=name, hovertemplate="%{x}: %{y:.4g}<extra></extra>"))
    fig.update_xaxes(type="category")
    return _styled(fig, title or "Singular task interference by depth (TSV)", "block", "STI")


SPECTRAL = {"spectra": (spectrum_lines, {"layer", "model", "index", "sigma"}),
            "flattening": (flattening_lines, {"layer", "stage", "index", "sigma"}),
            "interference": (interference_heatmap, {"layer", "task_i", "task_j", "sti"}),
            "interference_by_depth": (interference_depth, {"block", "sti"})}
DEDICATED.update(SPECTRAL)
