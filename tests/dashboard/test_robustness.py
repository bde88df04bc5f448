"""Robustness: truncated Parquet files and an empty runs directory give a page with a clear notice (and the
server stays up); requests for paths outside the runs directory are refused."""

from __future__ import annotations

import http.client
import os

import pyarrow.parquet as pq
import pytest

from ._page import rows, shown, trace, wait_figure, wait_rows
from .conftest import Dashboard, copy_run, screenshot

pytestmark = pytest.mark.slow


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
    d = Dashboard(root)
    yield d, root
    d.stop()


def test_truncated_tables_are_flagged_not_fatal(broken, page):
    d, root = broken
    good, bad = root / "good", root / "truncated"
    parts = sorted((bad / "steps").glob("part-*.parquet"))

    page.goto(d.url + "/")
    table = {r["name"]: r for r in wait_rows(page, "runs-table", 2)}
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
