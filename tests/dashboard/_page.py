"""Reading what the page shows: DataTable cells and Plotly figure data, through the DOM."""

from __future__ import annotations

from typing import Any

_ROWS_JS = """id => Array.from(document.querySelectorAll('#' + CSS.escape(id) + ' tbody tr')).map(tr => {
  const o = {};
  tr.querySelectorAll('td[data-dash-column]').forEach(td => {
    o[td.getAttribute('data-dash-column')] = td.innerText.trim();
  });
  return o;
}).filter(o => Object.keys(o).length > 0)"""

_FIG_JS = """id => { const gd = document.querySelector('#' + CSS.escape(id) + ' .js-plotly-plot');
  if (!gd || !gd._fullData) return null;
  // _fullData: the arrays as plotted (the server sends numpy columns base64-encoded; Plotly decodes them here)
  return {data: gd._fullData.map(t => ({name: t.name, type: t.type, x: Array.from(t.x || []), y: Array.from(t.y || []),
                                   z: t.z ? Array.from(t.z).map(r => Array.from(r)) : null})),
          shapes: (gd.layout.shapes || []).map(s => ({y0: s.y0, y1: s.y1})),
          annotations: (gd.layout.annotations || []).map(a => a.text)}; }"""


def rows(page, table_id: str) -> list[dict[str, str]]:
    """The cells of a DataTable's current page: one dict per row, column id -> text shown."""
    return page.evaluate(_ROWS_JS, table_id)


def wait_rows(page, table_id: str, n: int, timeout: float = 30_000) -> list[dict[str, str]]:
    """Wait until the table shows `n` rows, then return them."""
    page.wait_for_function(f"n => ({_ROWS_JS})({table_id!r}).length === n", arg=n, timeout=timeout)
    return rows(page, table_id)


def figure(page, graph_id: str) -> dict[str, Any] | None:
    """The traces (name, x, y, z), shapes and annotation texts of a dcc.Graph as drawn."""
    return page.evaluate(_FIG_JS, graph_id)


def wait_figure(page, graph_id: str, predicate_js: str, timeout: float = 30_000) -> dict[str, Any]:
    """Wait until `predicate_js` (a JS expression over `f`, the figure dict) holds, then return the figure."""
    page.wait_for_function(f"id => {{ const f = ({_FIG_JS})(id); return !!f && ({predicate_js}); }}",
                           arg=graph_id, timeout=timeout)
    return figure(page, graph_id)


def trace(fig: dict[str, Any], name: str) -> dict[str, Any]:
    """The trace called `name`."""
    found = [t for t in fig["data"] if t["name"] == name]
    assert found, f"no trace {name!r} among {[t['name'] for t in fig['data']]}"
    return found[0]


def shown(value: Any) -> float:
    """A number as the page rounds it (4 decimals)."""
    return round(float(value), 4)
