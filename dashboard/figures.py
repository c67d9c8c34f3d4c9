"""Plotly figures built from the engine's small pandas tables — pure functions, no state, no Gradio.

Agreement c = Σt m_t over T task masks.  For TALL masks (which weights each task needs) c = 0 is *catastrophic*
(needed by no task), c = 1 *selfish* (exactly one task), c ≥ 2 *general*; the Consensus mask keeps c ≥ k (Wang et
al., ICML 2024).  Those are TALL notions: for every other mask (TIES trims, DARE drops, PCB, CALM, the weights
Consensus keeps) c is drawn and labelled as what it is, the number of tasks whose mask keeps the weight.  Normalized accuracy is merged
accuracy divided by the task's individual fine-tuned accuracy (Ilharco et al., ICLR 2023).

The browser side is the plotly.js 3 bundled with Gradio while Python plotly 7 targets plotly.js 4, so the figures
stick to long-standing trace types (bar, heatmap, scatter), layout shapes and annotations, and a plain template.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

CLASS_COLORS = {"catastrophic": "#d62728", "selfish": "#ff7f0e", "general": "#2ca02c"}
MODEL_ORDER = ("pretrained", "individual", "merged", "TALL-reconstructed", "EMR-reconstructed")
KEPT_COLOR = "#1f77b4"
TALL_KINDS = ("tall",)  # mask kinds whose agreement classes mean catastrophic / selfish / general
THRESHOLD_KINDS = ("tall", "consensus_keep")  # mask kinds whose agreement the consensus k thresholds
KEPT_LABELS = {"catastrophic": "kept by no task", "selfish": "kept by one task", "general": "kept by 2+ tasks"}
MODEL_COLORS = {"pretrained": "#9e9e9e", "individual": "#1f77b4", "merged": "#2ca02c",
                "TALL-reconstructed": "#9467bd", "EMR-reconstructed": "#8c564b"}
ORDINAL_COLUMNS = ("stage", "step", "iteration", "epoch", "round")
PREFERRED_VALUES = ("accuracy", "coefficient", "fraction", "density", "value")
_AXIS = {"gridcolor": "#e5e5e5", "linecolor": "#bbbbbb", "zerolinecolor": "#bbbbbb", "automargin": True}
# a small explicit template: plotly's named templates are large (slow to copy per figure) and version-specific
TEMPLATE = {"layout": {"font": {"family": "sans-serif", "size": 12, "color": "#333"}, "paper_bgcolor": "white",
                       "plot_bgcolor": "white", "xaxis": _AXIS, "yaxis": _AXIS, "hovermode": "closest",
                       "colorway": ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                                    "#7f7f7f", "#bcbd22", "#17becf"]}}


def class_label(kind: str, name: str) -> str:
    """An agreement class as a ``kind`` mask means it: the TALL class name, else "kept by …"."""
    return name if kind in TALL_KINDS else KEPT_LABELS.get(name, name)


def _figure(*traces) -> go.Figure:
    return go.Figure(data=list(traces), layout={"template": TEMPLATE})


def _styled(fig: go.Figure, title: str, x: str = "", y: str = "", height: int = 360) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, height=height,
                      margin={"l": 60, "r": 20, "t": 50, "b": 50}, xaxis_title=x, yaxis_title=y)
    return fig


def placeholder(message: str) -> go.Figure:
    """An empty figure with a note (shown before the first merge; it also makes the browser load plotly.js
    while the page is idle rather than when the first results arrive)."""
    fig = _figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 14, "color": "#888"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _styled(fig, "", height=300)


def warm_up() -> None:
    """Build one figure of each trace type so plotly's lazily imported validators are loaded before the first
    merge's figures are needed."""
    _figure(go.Bar(x=[0], y=[0]), go.Heatmap(z=[[0]]), go.Scatter(x=[0], y=[0])).to_json()


def agreement_histogram(histogram: pd.DataFrame, k: int | None = None, title: str = "",
                        tall: bool = True) -> go.Figure:
    """Bars of the fraction of weights with agreement c = 0..T: for TALL masks (``tall``) coloured by class,
    otherwise one series "kept by c tasks"; the consensus threshold k (weights with c < k are removed) as a
    dashed line at c = k − ½."""
    fig = _figure()
    groups = histogram.groupby("class", sort=False) if tall else [("weights kept by c tasks", histogram)]
    for name, group in groups:
        fig.add_trace(go.Bar(x=group["c"], y=100 * group["fraction"], name=str(name),
                             marker_color=CLASS_COLORS.get(str(name), KEPT_COLOR), customdata=group["count"],
                             hovertemplate=("c = %{x}" if tall else "kept by %{x} tasks") +
                             "<br>%{y:.2f}% of weights (%{customdata:,})<extra>%{fullData.name}</extra>"))
    if k is not None:
        fig.add_shape(type="line", x0=k - 0.5, x1=k - 0.5, y0=0, y1=1, xref="x", yref="paper",
                      line={"color": "black", "dash": "dash", "width": 2})
        fig.add_annotation(x=k - 0.5, y=1, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                           text=f"consensus k = {k}: keep c ≥ {k}")
    fig.update_xaxes(dtick=1)
    return _styled(fig, title or "How many tasks use each weight (agreement c)",
                   "agreement c (number of tasks)" if tall else "kept by c tasks", "% of weights")


def layer_heatmap(by_layer: pd.DataFrame, title: str = "", tall: bool = True) -> go.Figure:
    """Layer × agreement c heatmap of the fraction of the layer's weights with that agreement (columns named
    by TALL class for TALL masks, else "kept by c")."""
    table = by_layer.pivot_table(index="layer", columns="c", values="fraction", observed=True, sort=False)
    classes = by_layer.drop_duplicates("c").set_index("c")["class"]
    labels = [f"{c}<br>{classes[c]}" if tall and classes[c] != "general" else str(c) if tall else f"kept by {c}"
              for c in table.columns]
    fig = _figure(go.Heatmap(z=100 * table.to_numpy(), x=labels, y=[str(v) for v in table.index],
                               colorscale="Viridis", zmin=0, colorbar={"title": {"text": "%"}},
                               hovertemplate="%{y}, c = %{x}: %{z:.2f}% of the layer<extra></extra>"))
    fig.update_xaxes(type="category")
    fig.update_yaxes(autorange="reversed", type="category")
    return _styled(fig, title or "Agreement classes per layer", "agreement c" if tall else "kept by c tasks",
                   "layer", height=max(320, 26 * len(table) + 120))


def jaccard_heatmap(jaccard: pd.DataFrame, title: str = "") -> go.Figure:
    """T×T Jaccard overlap |m_i ∧ m_j| / |m_i ∨ m_j| of the task masks."""
    names = [str(n) for n in jaccard.index]
    z = jaccard.to_numpy()
    fig = _figure(go.Heatmap(z=z, x=names, y=names, zmin=0, zmax=1, colorscale="Blues",
                               text=[[f"{v:.2f}" for v in row] for row in z], texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _styled(fig, title or "Mask overlap between tasks (Jaccard)", height=max(360, 40 * len(names) + 120))


def density_bars(density: pd.DataFrame, title: str = "") -> go.Figure:
    """Fraction of weights each task's mask keeps."""
    fig = _figure(go.Bar(x=density["task"], y=100 * density["density"], marker_color="#1f77b4",
                           text=[f"{100 * v:.1f}%" for v in density["density"]], textposition="outside",
                           cliponaxis=False, hovertemplate="%{x}: %{y:.2f}% of weights<extra></extra>"))
    fig.update_yaxes(range=[0, min(100.0, 115 * float(density["density"].max()) + 1)])
    return _styled(fig, title or "Mask density per task", "task", "% of weights kept")


def _ordered_models(models) -> list[str]:
    present = list(dict.fromkeys(models))
    return [m for m in MODEL_ORDER if m in present] + [m for m in present if m not in MODEL_ORDER]


def _with_mean(table: pd.DataFrame, value: str) -> pd.DataFrame:
    mean = table.groupby("model", sort=False, as_index=False)[value].mean()
    mean["task"] = "average"
    return pd.concat([table[["task", "model", value]], mean], ignore_index=True)


def _model_bars(table: pd.DataFrame, value: str, unit: str) -> go.Figure:
    """Grouped bars of 100 · ``value`` per task plus the average, one trace per model; hover shows ``unit``."""
    table = _with_mean(table, value)
    fig = _figure()
    for model in _ordered_models(table["model"]):
        rows = table[table["model"] == model]
        fig.add_trace(go.Bar(x=rows["task"], y=100 * rows[value], name=model, marker_color=MODEL_COLORS.get(model),
                             hovertemplate=f"%{{x}}: %{{y:.1f}}{unit}<extra>%{{fullData.name}}</extra>"))
    fig.update_layout(barmode="group")
    return fig


def accuracy_bars(accuracy: pd.DataFrame, title: str = "") -> go.Figure:
    """Grouped bars of per-task top-1 accuracy (long table: task, model, accuracy) plus the average."""
    fig = _model_bars(accuracy, "accuracy", "%")
    fig.update_yaxes(range=[0, 100])
    return _styled(fig, title or "Accuracy per task", "task", "top-1 accuracy (%)")


def normalized_accuracy(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Long table (task, model, normalized) of accuracy / individual fine-tuned accuracy for every model other
    than ``individual``; empty when the individual baseline is missing."""
    individual = accuracy[accuracy["model"] == "individual"].set_index("task")["accuracy"]
    others = accuracy[(accuracy["model"] != "individual") & accuracy["task"].isin(individual.index)].copy()
    others["normalized"] = others["accuracy"].to_numpy() / individual.loc[others["task"]].clip(lower=1e-12).to_numpy()
    return others[["task", "model", "normalized"]].reset_index(drop=True)


def normalized_bars(accuracy: pd.DataFrame, title: str = "") -> go.Figure:
    """Grouped bars of normalized accuracy (merged / individual) with the 100 % line."""
    fig = _model_bars(normalized_accuracy(accuracy), "normalized", "% of fine-tuned")
    fig.add_shape(type="line", x0=0, x1=1, y0=100, y1=100, xref="paper", yref="y",
                  line={"color": "black", "dash": "dot"})
    return _styled(fig, title or "Normalized accuracy (merged ÷ fine-tuned)", "task", "% of fine-tuned accuracy")


def parallel_coordinates(points: pd.DataFrame, title: str = "Parameters vs mean accuracy") -> go.Figure:
    """One line per run across the numeric parameters every run has (and the method, as a coded axis), coloured
    and ended by the run's mean accuracy (``points``: run, method, numeric parameter columns, "mean accuracy %")."""
    score = "mean accuracy %"
    methods = list(dict.fromkeys(points["method"]))
    dims = [{"label": "method", "values": [methods.index(m) for m in points["method"]],
             "tickvals": list(range(len(methods))), "ticktext": methods}] if len(methods) > 1 else []
    for column in points.columns:
        if column in ("run", "method", score) or not pd.api.types.is_numeric_dtype(points[column]) \
                or points[column].isna().any():  # a parameter some runs do not have would be drawn as a value
            continue
        dims.append({"label": str(column), "values": points[column]})
    accuracy = points[score].fillna(0)
    dims.append({"label": score, "values": accuracy})
    fig = _figure(go.Parcoords(dimensions=dims, line={"color": accuracy, "colorscale": "Viridis",
                                                      "showscale": True, "colorbar": {"title": {"text": "%"}}}))
    return _styled(fig, title)


def sign_conflict_bars(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Per-layer rate of TIES sign conflicts (trimmed entries whose sign disagrees with the elected sign)."""
    fig = _figure(go.Bar(x=table["layer"].astype(str), y=100 * table["sign_conflicts_rate"],
                           marker_color="#d62728", customdata=table["sign_conflicts"],
                           hovertemplate="%{x}: %{y:.2f}% (%{customdata:,} weights)<extra></extra>"))
    return _styled(fig, title or "Sign conflicts per layer (TIES)", "layer", "% of the layer's weights")


def layer_rank(layer: str) -> tuple:
    """Network order of the engine's layer names: embed, block.00, block.01, …, head (others after)."""
    return (0, layer) if layer == "embed" else (1, layer) if layer.startswith("block") else \
        (2, layer) if layer == "head" else (3, layer)


def coefficient_heatmap(table: pd.DataFrame, title: str = "") -> go.Figure:
    """AdaMerging's learned λ_{t,l}: task × layer heatmap (mean over a layer's tensors; task-wise: one column)."""
    grid = table.pivot_table(index="task", columns="layer", values="coefficient", aggfunc="mean", sort=False)
    grid = grid[sorted(grid.columns, key=layer_rank)]
    fig = _figure(go.Heatmap(z=grid.to_numpy(), x=list(map(str, grid.columns)), y=list(map(str, grid.index)),
                             colorscale="Viridis", colorbar={"title": {"text": "λ"}},
                             hovertemplate="%{y}, %{x}: λ = %{z:.3f}<extra></extra>"))
    fig.update_xaxes(type="category")
    fig.update_yaxes(autorange="reversed", type="category")
    return _styled(fig, title or "Learned merging coefficients (AdaMerging)", "layer", "task")


def stage_accuracy(stages: pd.DataFrame, title: str = "") -> go.Figure:
    """CALM's sequential stages: pseudo-label accuracy of the merged model on the tasks merged so far, per stage
    (stage 0 is the Task Arithmetic group)."""
    full = [f"{s}: {t}" for s, t in zip(stages["stage"], stages["task"])]
    labels = [label if len(label) <= 24 else label[:22] + "…" for label in full]
    fig = _figure(go.Scatter(x=labels, y=100 * stages["accuracy"].astype(float), mode="lines+markers",
                             name="accuracy", customdata=list(zip(full, stages["tasks_merged"])),
                             hovertemplate="%{customdata[0]}<br>%{y:.1f}% on %{customdata[1]} merged tasks"
                                           "<extra></extra>"))
    fig.update_xaxes(type="category")
    return _styled(fig, title or "Accuracy after each merging stage (CALM)", "stage", "accuracy (%)")


def training_curve(history: pd.DataFrame, title: str = "") -> go.Figure:
    """Per-update objective (entropy, loss, …) of a learned merge; accuracy, when reported, on a right axis."""
    x = list(range(1, len(history) + 1))
    fig = _figure()
    skip = {"step", "stage", "seconds", "accuracy"}
    for column in _numeric(history):
        if column not in skip and history[column].notna().any():
            fig.add_trace(go.Scatter(x=x, y=history[column], mode="lines", name=str(column)))
    if "accuracy" in history and history["accuracy"].notna().any():
        fig.add_trace(go.Scatter(x=x, y=100 * history["accuracy"].astype(float), mode="lines", name="accuracy (%)",
                                 yaxis="y2", line={"dash": "dot"}))
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": {"text": "accuracy (%)"},
                                  "showgrid": False})
    return _styled(fig, title or "Training curve", "update", "objective")


def task_curves(table: pd.DataFrame, title: str = "") -> go.Figure:
    """Each task's entropy (top) and accuracy on its batches (bottom, where the images have labels) over the
    updates of AdaMerging, as rolling means over 5 % of the steps: a task whose entropy falls while its accuracy
    falls too is one the unlabeled objective misleads."""
    steps = sorted(table["step"].unique())
    window = max(1, round(len(steps) / 20))
    has_accuracy = table["accuracy"].notna().any()
    fig = make_subplots(rows=2 if has_accuracy else 1, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    colours = TEMPLATE["layout"]["colorway"]
    for i, (task, rows) in enumerate(table.groupby("task", sort=False)):
        rows = rows.sort_values("step")
        style = {"mode": "lines", "name": str(task), "legendgroup": str(task),
                 "line": {"color": colours[i % len(colours)]}}
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["entropy"].rolling(window, min_periods=1).mean(), **style,
                                 hovertemplate=f"{task}: entropy %{{y:.3f}} at step %{{x}}<extra></extra>"),
                      row=1, col=1)
        if has_accuracy:
            accuracy = 100 * rows["accuracy"].astype(float).rolling(window, min_periods=1).mean()
            fig.add_trace(go.Scatter(x=rows["step"], y=accuracy, **style, showlegend=False,
                                     hovertemplate=f"{task}: %{{y:.1f}}% at step %{{x}}<extra></extra>"),
                          row=2, col=1)
    fig.update_layout(template=TEMPLATE)
    fig = _styled(fig, title or f"Entropy and accuracy per task (mean of {window} steps)", height=560)
    fig.update_yaxes(title_text="entropy", row=1, col=1)
    if has_accuracy:
        fig.update_yaxes(title_text="accuracy (%)", row=2, col=1)
    fig.update_xaxes(title_text="update", row=2 if has_accuracy else 1, col=1)
    return fig


DEDICATED = {"sign_conflicts": (sign_conflict_bars, {"layer", "sign_conflicts", "sign_conflicts_rate"}),
             "coefficients": (coefficient_heatmap, {"task", "layer", "coefficient"}),
             "stages": (stage_accuracy, {"stage", "task", "tasks_merged", "accuracy"}),
             "history": (training_curve, {"step"}),
             "task_history": (task_curves, {"step", "task", "entropy", "accuracy"})}


def method_table_figure(name: str, table: pd.DataFrame) -> go.Figure | None:
    """The dedicated figure for a known result table (when it has the expected columns), else a generic one."""
    builder, columns = DEDICATED.get(name, (None, set()))
    if builder is not None and columns <= set(table.columns) and not table.empty:
        return builder(table)
    return table_figure(name.replace("_", " "), table)


def _numeric(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])
            and not pd.api.types.is_bool_dtype(table[c])]


def _pick_value(columns: list[str]) -> str:
    for preferred in PREFERRED_VALUES:
        for column in columns:
            if preferred in str(column).lower():
                return column
    rates = [c for c in columns if str(c).endswith("_rate")]
    return rates[0] if rates else columns[-1]


def table_figure(name: str, table: pd.DataFrame) -> go.Figure | None:
    """A reasonable figure for any small result table (learned coefficients, per-stage accuracy, …):
    square labelled matrix → heatmap; two label columns → heatmap of the value; an ordinal column
    (stage/step/…) → lines; one label column → bars.  ``None`` when nothing numeric is in it."""
    if table.empty:
        return None
    numeric = _numeric(table)
    if len(table.index) == len(table.columns) and list(map(str, table.index)) == list(map(str, table.columns)) \
            and len(numeric) == len(table.columns):
        fig = _figure(go.Heatmap(z=table.to_numpy(), x=list(map(str, table.columns)),
                                   y=list(map(str, table.index)), colorscale="Viridis"))
        fig.update_yaxes(autorange="reversed")
        return _styled(fig, name)
    ordinal = [c for c in table.columns if str(c).lower() in ORDINAL_COLUMNS]
    labels = [c for c in table.columns if c not in numeric]
    values = [c for c in numeric if c not in ordinal]
    if not values:
        return None
    value = _pick_value(values)
    if ordinal:
        x = ordinal[0]
        fig = _figure()
        groups = table.groupby(labels[0], sort=False) if labels else [(value, table)]
        for label, group in groups:
            fig.add_trace(go.Scatter(x=group[x], y=group[value], mode="lines+markers", name=str(label)))
        return _styled(fig, name, str(x), str(value))
    if len(labels) >= 2:
        grid = table.pivot_table(index=labels[0], columns=labels[1], values=value, sort=False)
        fig = _figure(go.Heatmap(z=grid.to_numpy(), x=list(map(str, grid.columns)),
                                   y=list(map(str, grid.index)), colorscale="Viridis",
                                   colorbar={"title": {"text": str(value)}}))
        fig.update_yaxes(autorange="reversed")
        return _styled(fig, name, str(labels[1]), str(labels[0]))
    x = table[labels[0]].astype(str) if labels else table.index.astype(str)
    fig = _figure(go.Bar(x=x, y=table[value], name=str(value)))
    return _styled(fig, name, str(labels[0]) if labels else "", str(value))


def run_figures(stats: Mapping[str, object], tables: Mapping[str, pd.DataFrame], accuracy: pd.DataFrame | None,
                k: int | None = None, mask_kind: str | None = None) -> dict[str, go.Figure | None]:
    """All figures of one run: mask statistics of ``mask_kind`` (default: the first mask set), accuracy,
    and the method's own tables.  ``stats`` maps a mask kind to a :class:`merging.maskstats.MaskStats`."""
    figures: dict[str, go.Figure | None] = dict.fromkeys(
        ("histogram", "layers", "jaccard", "density", "accuracy", "normalized"))
    if stats:
        kind = mask_kind if mask_kind in stats else next(iter(stats))
        chosen, tall = stats[kind], kind in TALL_KINDS
        suffix = f" · {kind}"
        figures["histogram"] = agreement_histogram(
            chosen.histogram, k if kind in THRESHOLD_KINDS else None,
            ("Tasks using each weight" if tall else "Tasks whose mask keeps each weight") + suffix, tall)
        figures["layers"] = layer_heatmap(chosen.by_layer, ("Agreement per layer" if tall else "Kept by c tasks, "
                                                            "per layer") + suffix, tall)
        figures["jaccard"] = jaccard_heatmap(chosen.jaccard, "Mask overlap (Jaccard)" + suffix)
        figures["density"] = density_bars(chosen.density, "Mask density" + suffix)
    if accuracy is not None and not accuracy.empty:
        figures["accuracy"] = accuracy_bars(accuracy)
        if (accuracy["model"] == "individual").any() and (accuracy["model"] != "individual").any():
            figures["normalized"] = normalized_bars(accuracy)
    for name, table in tables.items():
        figures[f"table:{name}"] = method_table_figure(name, table)
    return figures


from . import spectral_figures  # noqa: E402,F401  (registers the SVD family figures in DEDICATED)
