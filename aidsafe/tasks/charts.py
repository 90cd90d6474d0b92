"""Charts for the HTML pages (`aidsafe view`, `aidsafe compare --html`), drawn by matplotlib and
rendered offline to inline SVG: no display, no network, no script. Text stays text (the page's
fonts draw it, so it can be read, searched and copied), and each chart is laid out by
matplotlib's constrained layout, so axis labels are not cut and error bars sit on their bars."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
WIDTH = 7.2  # inches; the pages scale charts down to their width
Series = Sequence[tuple[str, Sequence[float | None]]]
Interval = tuple[float, float] | None
MAX_OUTLIER_GROUP = 2000


def _figure(height: float, rows: int = 1, columns: int = 1) -> tuple[Figure, list[Axes]]:
    # The Figure class itself, not pyplot: no global state, no GUI backend; savefig picks the
    # SVG backend from the format.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH, height), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).flatten().tolist()
    return figure, axes


def to_svg(figure: Figure, title: str) -> str:
    """The figure as an inline `<svg>` element, reproducible: ids are salted by the title (two
    charts of a page never share one) and the file's date and metadata are left out."""
    import matplotlib

    figure.suptitle(title, fontsize=11, fontweight="bold")
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": title}):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    label = title.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    return text.replace(
        "<svg ",
        f'<svg role="img" aria-label="{label}" class="chart" style="max-width:100%;height:auto" ',
        1,
    )


def _style(axes: Axes, xlabel: str, ylabel: str, values: Literal["x", "y"] = "y") -> None:
    """Labels, light grid lines along the value axis, and whole-number ticks on it (counts,
    tokens, 1-5 scores: a tick at 0.25 row means nothing)."""
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis=values, alpha=0.3)
    axes.set_axisbelow(True)
    (axes.xaxis if values == "x" else axes.yaxis).set_major_locator(MaxNLocator(integer=True))


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Series,
    *,
    errors: Sequence[Sequence[Interval]] | None = None,
    xlabel: str = "",
    ylabel: str = "",
    top: float | None = None,
    stacked: bool = False,
    horizontal: bool = False,
) -> str:
    """Bars per category, one bar per series side by side (or stacked); `errors` gives an
    interval (low, high) per bar, drawn as an error bar with caps on the bar's centre.
    Horizontal bars suit long category names (failure reasons, policy ids)."""
    height = max(2.6, 0.6 + 0.28 * len(categories) * (1 if stacked else len(series)))
    figure, [axes] = _figure(height if horizontal else 3.2)
    positions = list(range(len(categories)))
    width = 0.8 if stacked else 0.8 / max(1, len(series))
    base = [0.0] * len(categories)
    for n, (name, values) in enumerate(series):
        heights = [v or 0.0 for v in values]
        offset = 0.0 if stacked else (n - (len(series) - 1) / 2) * width
        at = [p + offset for p in positions]
        intervals = errors[n] if errors else None
        spread = None
        if intervals:
            spread = [
                [max(0.0, h - i[0]) if i else 0.0 for h, i in zip(heights, intervals, strict=True)],
                [max(0.0, i[1] - h) if i else 0.0 for h, i in zip(heights, intervals, strict=True)],
            ]
        draw = axes.barh if horizontal else axes.bar
        extent = {"height": width, "left": base} if horizontal else {"width": width, "bottom": base}
        error = {"xerr" if horizontal else "yerr": spread}
        draw(
            at,
            heights,
            **extent,  # type: ignore[arg-type]
            label=name,
            color=COLOURS[n % len(COLOURS)],
            capsize=3 if spread else 0,
            error_kw={"elinewidth": 1, "ecolor": "#222"},
            **error,  # type: ignore[arg-type]
        )
        if stacked:
            base = [b + h for b, h in zip(base, heights, strict=True)]
    if horizontal:
        axes.set_yticks(positions, list(categories))
        axes.invert_yaxis()  # the first category on top
        _style(axes, ylabel or xlabel, "", values="x")
        if top is not None:
            axes.set_xlim(0, top)
    else:
        long = max((len(c) for c in categories), default=0) > 8
        axes.set_xticks(positions, list(categories), rotation=30 if long else 0)
        if long:
            for label in axes.get_xticklabels():
                label.set_horizontalalignment("right")
                label.set_rotation_mode("anchor")
        _style(axes, xlabel, ylabel)
        if top is not None:
            axes.set_ylim(0, top)
    if len(series) > 1:  # beside the plot, where it hides no bar
        figure.legend(loc="outside right upper", fontsize=8, frameon=False)
    return to_svg(figure, title)


def distributions(
    title: str,
    panels: Mapping[str, Series],
    categories: Sequence[str],
    *,
    columns: int = 3,
    xlabel: str = "",
    ylabel: str = "",
) -> str:
    """Small multiples: one panel of side-by-side bars per key (e.g. the score counts 1-5 of
    each grade metric, one bar per run), sharing one legend."""
    rows = -(-len(panels) // columns)
    figure, grid = _figure(2.2 * rows + 0.6, rows, columns)
    width = 0.8 / max(1, max((len(s) for s in panels.values()), default=1))
    for axes, (name, series) in zip(grid, panels.items(), strict=False):
        for n, (label, values) in enumerate(series):
            offset = (n - (len(series) - 1) / 2) * width
            axes.bar(
                [p + offset for p in range(len(categories))],
                [v or 0.0 for v in values],
                width=width,
                label=label,
                color=COLOURS[n % len(COLOURS)],
            )
        axes.set_xticks(range(len(categories)), list(categories))
        axes.set_title(name, fontsize=9)
        _style(axes, xlabel, ylabel)
    for axes in grid[len(panels) :]:
        axes.set_visible(False)
    first = next(iter(panels.values()), [])
    if len(first) > 1:
        handles, labels = grid[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=len(first), fontsize=8)
    return to_svg(figure, title)


def box_chart(title: str, groups: Mapping[str, Sequence[float]], *, xlabel: str = "") -> str:
    """One horizontal box per group (median, quartiles, 1.5 IQR whiskers); outliers are dots
    while every group is small enough for them to stay readable (and the SVG small)."""
    names = [name for name, values in groups.items() if values]
    figure, [axes] = _figure(max(2.4, 0.8 + 0.4 * len(names)))
    axes.boxplot(
        [list(groups[name]) for name in names],
        orientation="horizontal",
        tick_labels=names,
        showfliers=all(len(groups[name]) <= MAX_OUTLIER_GROUP for name in names),
        flierprops={"markersize": 2, "alpha": 0.4},
        medianprops={"color": COLOURS[1]},
    )
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="x", alpha=0.3)
    return to_svg(figure, title)


def line_chart(
    title: str,
    x: Sequence[float],
    series: Series,
    *,
    xlabel: str = "",
    ylabel: str = "",
    marker: float | None = None,
) -> str:
    """Lines over a shared x axis, one per series (a gap where a value is None), with an
    optional dashed vertical line at `marker` (a chosen cut-off). Values are shares, 0 to 1 on
    the y axis (kappa can dip below 0: the axis then shows it)."""
    figure, [axes] = _figure(3.2)
    lowest = 0.0
    for n, (name, values) in enumerate(series):
        drawn = [float("nan") if v is None else v for v in values]
        lowest = min([lowest, *(v for v in values if v is not None)])
        axes.plot(x, drawn, label=name, color=COLOURS[n % len(COLOURS)], marker=".", lw=1.5)
    if marker is not None:
        axes.axvline(marker, color="#222", lw=1, ls="--")
    axes.set_ylim(min(0.0, lowest - 0.05), 1.02)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(alpha=0.3)
    axes.set_axisbelow(True)
    if len(series) > 1:
        figure.legend(loc="outside right upper", fontsize=8, frameon=False)
    return to_svg(figure, title)
