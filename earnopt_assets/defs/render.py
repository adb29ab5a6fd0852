"""Markdown for Dagster materialization metadata: small tables and embedded matplotlib figures.

Plain Python (no Dagster); the asset modules wrap the strings in ``dg.MetadataValue.md``.
"""

from __future__ import annotations

import base64
import io

import pandas as pd


def markdown_table(
    frame: pd.DataFrame,
    *,
    float_format: str = "{:.6g}",
    empty: str = "_(empty)_",
    max_rows: int | None = None,
) -> str:
    """A small frame as a markdown table; ``|`` and newlines in cells are escaped so rows stay rows.

    With ``max_rows`` only the first rows are shown and a note counts the rest.
    """
    if frame.empty:
        return empty
    shown = frame if max_rows is None else frame.head(max_rows)

    def cell(value: object) -> str:
        if isinstance(value, float):
            return float_format.format(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, shown.columns)) + " |", "|" + "---|" * len(shown.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    if max_rows is not None and len(frame) > max_rows:
        lines.append(f"\n_{len(frame) - max_rows} more rows_")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the headless Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_markdown(fig, alt: str) -> str:
    """Render ``fig`` to PNG, close it, and return it as an inline markdown image."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()})"
