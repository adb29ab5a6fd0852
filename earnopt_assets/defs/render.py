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


def _cell(value: object) -> object:
    """A metadata cell: plain Python scalars only, with missing values as None (rendered empty, never 'nan')."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        value = value.item()
        if isinstance(value, float) and value != value:
            return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def table_metadata(frame: pd.DataFrame, *, descriptions: dict[str, str] | None = None, max_rows: int | None = None):
    """A DataFrame as a ``dg.TableMetadataValue`` that the Dagster UI renders inline.

    Column names should carry their unit (``share_%``, ``earnings_usd_per_h``); the schema types are
    inferred (bool, int, float, else string) and ``descriptions`` adds a tooltip per column. Missing
    values become empty cells, so no ``None``/``nan`` reaches the UI. Imports Dagster lazily so this
    module stays importable without it.
    """
    import dagster as dg

    descriptions = descriptions or {}
    shown = frame if max_rows is None else frame.head(max_rows)

    def column_type(dtype) -> str:
        if pd.api.types.is_bool_dtype(dtype):
            return "bool"
        if pd.api.types.is_integer_dtype(dtype):
            return "int"
        if pd.api.types.is_float_dtype(dtype):
            return "float"
        return "string"

    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=str(name), type=column_type(shown[name].dtype), description=descriptions.get(str(name)))
            for name in shown.columns
        ]
    )
    records = [
        dg.TableRecord({str(k): _cell(v) for k, v in zip(shown.columns, row)})
        for row in shown.itertuples(index=False, name=None)
    ]
    return dg.MetadataValue.table(records=records, schema=schema)
