"""Robustness: truncated Parquet files and an empty runs directory give a page with a clear notice (and the
server stays up); requests for paths outside the runs directory are refused; hostile content planted in the
runs directory (an SVG or HTML file with script, a run name that is Markdown) never runs or spoofs a link."""

from __future__ import annotations

import http.client
import os

import pyarrow.parquet as pq
import pytest

from ._page import rows, shown, trace, wait_figure, wait_rows
from .conftest import Dashboard, copy_run, screenshot

pytestmark = pytest.mark.slow
HOSTILE = "x](javascript:alert(1))[y"  # a run directory named as Markdown
EVIL_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" onload="alert(document.domain)">'
            '<script>alert("svg-xss")</script></svg>')


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _get(port: int, raw_path: str, method: str = "GET") -> tuple[int, bytes]:
    """A request with the path sent exactly as given (no client-side normalisation of `..`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, raw_path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


@pytest.fixture(scope="module")
def broken(real_run, tmp_path_factory):
    """A runs directory with a good run, a run whose epochs table and first step part are truncated, and
    symlinks that point out of it; one dashboard serves it for this module."""
    base = tmp_path_factory.mktemp("broken")
    root = base / "runs"
    root.mkdir()
    copy_run(real_run, root / "good")
    bad = copy_run(real_run, root / "truncated")
    _truncate(bad / "epochs.parquet")
    _truncate(sorted((bad / "steps").glob("part-*.parquet"))[0])
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"\x89PNG secret")
    (base / "secret.yaml").write_text("password: x\n")
    os.symlink(outside / "secret.png", root / "good" / "figures" / "leak.png")  # a symlink out of the runs dir
    os.symlink(outside, root / "linked")
    copy_run(real_run, root / HOSTILE)
    (root / "good" / "figures" / "evil.svg").write_text(EVIL_SVG)
    (root / "good" / "figures" / "evil.html").write_text("<script>alert('html-xss')</script>")
    (root / "good" / "figures" / "evil.png").write_text(EVIL_SVG)  # script in a file named like a figure
    (root / "good" / "exports").mkdir()
    (root / "good" / "exports" / "enhancer.onnx").write_bytes(b"onnx-bytes")  # what `gradprom export` writes
    (root / "good" / "exports" / "enhancer.onnx.json").write_text('{"format": "onnx"}\n')
    d = Dashboard(root)
    yield d, root
    d.stop()


def test_truncated_tables_are_flagged_not_fatal(broken, page):
    d, root = broken
    good, bad = root / "good", root / "truncated"
    parts = sorted((bad / "steps").glob("part-*.parquet"))

    page.goto(d.url + "/")
    table = {r["name"]: r for r in wait_rows(page, "runs-table", 3)}
    page.wait_for_selector("#runs-notice .notice-line")
    text = page.locator("#runs-notice").inner_text()
    assert "truncated: epochs.parquet is unreadable (truncated or corrupt) and was skipped" in text
    val = [r for r in pq.read_table(good / "epochs.parquet").to_pylist() if r["split"] == "val"]
    assert float(table["good"]["best_psnr"]) == shown(max(r["psnr"] for r in val))
    assert table["truncated"]["best_psnr"] == ""
    screenshot(page, "robust-runs-truncated")

    page.goto(d.url + "/run/truncated")
    page.wait_for_selector("#run-notice .notice-line")
    notes = page.locator("#run-notice").inner_text()
    assert "epochs.parquet is unreadable" in notes and f"steps/{parts[0].name} is unreadable" in notes
    # the readable part file is still drawn
    kept = pq.read_table(parts[1]).column("step").to_pylist()
    gate = wait_figure(page, "run-gate", "f.data.some(t => t.name === 'cos')")
    assert trace(gate, "cos")["x"] == kept
    screenshot(page, "robust-run-truncated")
    assert d.alive() and _get(d.port, "/")[0] == 200 and not page.errors


def test_empty_runs_directory_says_so(start_dashboard, page, tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    d = start_dashboard(root)
    page.goto(d.url + "/")
    page.wait_for_selector("#runs-notice .notice-line")
    assert f"No runs in {root.resolve()} yet" in page.locator("#runs-notice").inner_text()
    assert rows(page, "runs-table") == []
    screenshot(page, "robust-empty")
    page.goto(d.url + "/run/nothing-here")
    page.wait_for_selector("#run-notice .notice-line")
    assert "'nothing-here' is not a run directory" in page.locator("#run-notice").inner_text()
    assert not page.errors


def test_paths_outside_the_runs_directory_are_refused(broken):
    d, root = broken
    run, tmp_path = root / "good", root.parent

    status, body = _get(d.port, "/files/good/figures/samples.png")
    assert status == 200 and body == (run / "figures" / "samples.png").read_bytes()
    refused = ["/files/../secret.yaml", "/files/good/../../secret.yaml", "/files/good/%2e%2e/%2e%2e/secret.yaml",
               "/files/%2e%2e/outside/secret.png", f"/files/{tmp_path}/secret.yaml", f"/files//{tmp_path}/secret.yaml",
               f"/files/%2F{str(tmp_path).lstrip('/')}/secret.yaml", "/files/good/figures/leak.png",
               "/files/linked/secret.png", "/files/good/..%5c..%5csecret.yaml",
               "/files/good/config.yaml/../run.json"]
    for path in refused:
        status, body = _get(d.port, path)
        assert status in (403, 404), (path, status)
        assert b"secret" not in body and b"password" not in body, path
    # only figures and configs: no checkpoints, no Parquet, nothing but GET
    assert _get(d.port, "/files/good/epochs.parquet")[0] == 403
    assert _get(d.port, "/files/good/figures/samples.png", method="DELETE")[0] == 405
    assert _get(d.port, "/files/good/figures/samples.png", method="POST")[0] == 405
    assert (run / "figures" / "samples.png").is_file() and d.alive()


def _headers(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def test_planted_svg_and_html_never_run_script(broken, page):
    d, root = broken
    for name in ("evil.svg", "evil.html"):  # active types: only as an opaque download
        status, headers, _ = _headers(d.port, f"/files/good/figures/{name}")
        assert status == 200 and headers["content-disposition"].startswith("attachment"), headers
        assert headers["content-type"] == "application/octet-stream"
    status, headers, _ = _headers(d.port, "/files/good/figures/samples.png")
    assert status == 200 and headers["content-type"] == "image/png"
    for path in ("/files/good/figures/samples.png", "/files/good/config.yaml", "/files/good/figures/evil.svg"):
        headers = _headers(d.port, path)[1]
        assert "sandbox" in headers["content-security-policy"] and "default-src 'none'" in headers[
            "content-security-policy"] and headers["x-content-type-options"] == "nosniff", path

    # in Chromium: open each planted file as a user following a link would; no script may run
    dialogs: list[str] = []
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    for name in ("evil.svg", "evil.html", "evil.png"):
        try:
            page.goto(f"{d.url}/files/good/figures/{name}")
        except Exception as e:  # a download, not a page: Playwright says "Download is starting"
            assert "Download is starting" in str(e), e
        page.wait_for_timeout(500)
    # embedded in a page of the dashboard's own origin, too
    page.goto(d.url + "/")
    page.evaluate("""() => { for (const n of ['evil.svg', 'evil.html', 'evil.png']) {
        for (const [tag, attr] of [['iframe', 'src'], ['object', 'data'], ['img', 'src'], ['embed', 'src']]) {
            const e = document.createElement(tag); e[attr] = '/files/good/figures/' + n; document.body.appendChild(e);
        } } }""")
    page.wait_for_timeout(1500)
    assert dialogs == [] and not page.errors


def test_a_run_named_as_markdown_is_shown_verbatim_and_links_to_its_page(broken, page):
    d, root = broken
    dialogs: list[str] = []
    page.on("dialog", lambda dlg: (dialogs.append(dlg.message), dlg.dismiss()))
    page.goto(d.url + "/")
    names = [r["name"] for r in wait_rows(page, "runs-table", 3)]
    assert HOSTILE in names
    links = page.eval_on_selector_all('#runs-table td[data-dash-column="name"] a',
                                      "els => els.map(e => [e.textContent, e.getAttribute('href')])")
    assert [HOSTILE, "/run/x%5D%28javascript%3Aalert%281%29%29%5By"] in links
    assert not any(h.lower().startswith("javascript") for _, h in links)
    page.locator('#runs-table td[data-dash-column="name"] a', has_text="javascript").click()
    page.wait_for_function("() => document.querySelector('#run-title')")
    assert page.locator("#run-title").inner_text() == HOSTILE
    page.wait_for_selector('#run-summary td[data-dash-column="value"]')  # its page is drawn
    assert dialogs == [] and not page.errors


def test_a_path_of_4000_segments_is_404_not_500(broken):
    d, _ = broken
    status, _ = _get(d.port, "/files/" + "a/" * 4000 + "x.yaml")
    assert status == 404 and d.alive() and _get(d.port, "/")[0] == 200
    assert "Traceback" not in d.log.read_text()


def test_the_log_is_one_line_without_an_access_log(broken):
    d, _ = broken
    for _ in range(3):
        assert _get(d.port, "/files/good/config.yaml")[0] == 200
    lines = [ln for ln in d.log.read_text().splitlines() if ln.strip()]
    serving = [ln for ln in lines if "serving" in ln]
    assert serving == [f"gradprom dashboard: serving {d.runs.resolve()} at {d.url}/ (Ctrl+C to stop)"], lines
    assert not [ln for ln in lines if '"GET ' in ln or "Running on" in ln or "Serving Flask" in ln], lines


def test_exported_models_are_linked_and_download_only_from_exports(broken):
    from gradprom.dashboard.discover import get_run
    from gradprom.dashboard.views.run import exports

    d, root = broken
    status, body = _get(d.port, "/files/good/exports/enhancer.onnx")
    assert status == 200 and body == b"onnx-bytes"
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    conn.request("GET", "/files/good/exports/enhancer.onnx")
    resp = conn.getresponse()
    assert "attachment" in resp.getheader("Content-Disposition", "") and resp.getheader("Content-Security-Policy")
    conn.close()
    assert _get(d.port, "/files/good/checkpoints/latest.pt")[0] == 403  # checkpoints stay private
    links = exports(get_run(root, "good"))
    hrefs = [a.href for li in links.children[1].children for a in li.children if hasattr(a, "href")]
    assert hrefs[0].startswith("/files/good/exports/enhancer.onnx") and "enhancer.onnx.json" in hrefs[1]
