"""Showing results in a notebook so that the executed notebook stands on its own.

A plotly figure shown with `fig.show()` is only its JSON: a live JupyterLab draws it, an HTML export
(nbconvert), a notebook viewer or a saved notebook opened elsewhere shows nothing. `show(fig)`
displays one output with both: the plotly JSON (the live, interactive figure) and a PNG of the same
figure rendered by kaleido (what every other reader shows). `show_figures(figs, out_dir)` does that
for a notebook's figures at once and saves them (`plots.save_figures`: offline HTML, PNG files) with
the PNGs rendered once. `show_table(rows)` shows rows as a table (HTML live and in exports, Markdown
as text).

PNG rendering keeps one kaleido browser for the process (`kaleido.start_sync_server`): the first
figure costs a browser start (~5 s on 2 cores), the next ones well under a second. Without kaleido
or a Chromium the output carries the plotly JSON and a text line saying why there is no image.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from lramlab.analysis.plots import png_export_available, png_size

PLOTLY_MIME = "application/vnd.plotly.v1+json"

_SERVER_STARTED = False


def _start_server() -> None:
    global _SERVER_STARTED
    if _SERVER_STARTED:
        return
    try:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
    except Exception:  # noqa: BLE001 - without the server each image starts its own browser (slower)
        pass
    _SERVER_STARTED = True


def figure_pngs(figs: Sequence[Any]) -> tuple[list[bytes | None], str | None]:
    """PNG bytes of each figure at `png_size`, and None plus the reason when they cannot be made."""
    ok, why = png_export_available()
    if not ok:
        return [None] * len(figs), why
    _start_server()
    import warnings

    out: list[bytes | None] = []
    try:
        for fig in figs:
            w, h = png_size(fig)
            with warnings.catch_warnings():  # "kopts ... ignored if using a server": nothing to act on
                warnings.simplefilter("ignore", UserWarning)
                out.append(fig.to_image(format="png", width=w, height=h))
    except Exception as err:  # noqa: BLE001 - a kaleido/Chromium failure costs the image, not the notebook
        return out + [None] * (len(figs) - len(out)), f"{type(err).__name__}: {err}"
    return out, None


def figure_bundle(fig, png: bytes | None = None, why: str | None = None) -> dict[str, Any]:
    """The mime bundle of one figure: plotly JSON (live), image/png (static), text/plain (its title)."""
    import json

    title = fig.layout.title.text or "figure"
    bundle: dict[str, Any] = {PLOTLY_MIME: json.loads(fig.to_json()), "text/plain": f"<figure: {title}>"}
    if png is not None:
        bundle["image/png"] = png
    elif why:
        bundle["text/plain"] = f"<figure: {title}; no static image: {why}>"
    return bundle


def _display_bundle(bundle: Mapping[str, Any], width: int | None = None) -> None:
    from IPython.display import display

    import base64

    data = dict(bundle)
    md = {}
    if isinstance(data.get("image/png"), bytes):
        data["image/png"] = base64.b64encode(data["image/png"]).decode("ascii")
        if width:
            md = {"image/png": {"width": width}}
    display(data, raw=True, metadata=md)


def show(fig) -> None:
    """Display a plotly figure with a static PNG beside its plotly JSON (see the module docstring)."""
    (png,), why = figure_pngs([fig])
    _display_bundle(figure_bundle(fig, png, why), png_size(fig)[0])


def show_figures(figures: Mapping[str, Any], out_dir: str | os.PathLike | None = None, png: bool = True,
                 display: bool = True) -> dict[str, Any]:
    """Show every figure (plotly JSON + PNG) and, with `out_dir`, save them as `plots.save_figures`
    does (HTML that works offline; PNG files when `png`), rendering each PNG once. Returns
    `save_figures`' record ({} without out_dir)."""
    from lramlab.analysis.plots import save_figures

    names = list(figures)
    pngs, why = figure_pngs([figures[n] for n in names])
    if display:
        for n, b in zip(names, pngs):
            _display_bundle(figure_bundle(figures[n], b, why), png_size(figures[n])[0])
    if out_dir is None:
        return {}
    return save_figures(figures, out_dir, png=png, rendered=dict(zip(names, pngs)) if why is None else None)


class Table:
    """Rows shown as a table: HTML live and in exports, Markdown in `str()`/text outputs.

    Floats are rounded to `digits` significant decimals (no 63.040000000000006)."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                 digits: int = 3, title: str = ""):
        self.rows = [dict(r) for r in rows]
        cols = list(columns) if columns is not None else list(dict.fromkeys(k for r in self.rows for k in r))
        self.columns, self.digits, self.title = cols, digits, title

    def _cell(self, v) -> str:
        if isinstance(v, bool) or v is None:
            return "" if v is None else str(v)
        if isinstance(v, float):
            if v != v:
                return "n/a"
            return f"{v:.{self.digits}g}" if abs(v) >= 10 ** self.digits or (v and abs(v) < 1e-3) else \
                f"{round(v, self.digits):g}"
        if isinstance(v, (list, tuple)):
            return ", ".join(self._cell(x) for x in v) if len(v) <= 4 else f"{len(v)} values"
        if isinstance(v, Mapping):
            return "; ".join(f"{k}: {self._cell(x)}" for k, x in v.items()) if len(v) <= 4 else f"{len(v)} entries"
        return str(v)

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |\n| " + " | ".join("---" for _ in self.columns) + " |\n"
        body = "".join("| " + " | ".join(self._cell(r.get(c)) for c in self.columns) + " |\n" for r in self.rows)
        return (f"**{self.title}**\n\n" if self.title else "") + head + body

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def _repr_html_(self) -> str:
        import html

        th = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        trs = "".join("<tr>" + "".join(f"<td>{html.escape(self._cell(r.get(c)))}</td>" for c in self.columns)
                      + "</tr>" for r in self.rows)
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table class='lram-table'>{cap}<thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"

    def __repr__(self) -> str:
        return self.markdown()


def show_table(rows, columns: Sequence[str] | None = None, index: str | None = None, digits: int = 3,
               title: str = "") -> Table:
    """Rows (dicts; a mapping key -> dict, the key becoming column `index`; or a flat mapping
    key -> value, shown as two columns `index` / value) as a `Table`."""
    if isinstance(rows, Mapping):
        key = index or "name"
        if all(isinstance(v, Mapping) for v in rows.values()):
            rows = [{key: k, **dict(v)} for k, v in rows.items()]
        else:
            rows = [{key: k, "value": v} for k, v in rows.items()]
    return Table(list(rows), columns, digits, title)


__all__ = ["show", "show_figures", "show_table", "Table", "figure_pngs", "figure_bundle", "png_size"]
