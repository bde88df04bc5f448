"""The Ray view against a real `ray start --head`: the cluster's status and a link to its Ray dashboard."""

from __future__ import annotations

import pytest

from .._ray_head import RayHead
from .conftest import screenshot

pytestmark = pytest.mark.slow


def test_ray_view_shows_status_and_links_the_ray_dashboard(start_dashboard, page, tmp_path):
    head = RayHead()
    try:
        d = start_dashboard(tmp_path, "--ray-address", head.address)
        page.goto(d.url + "/")
        page.click("#nav-ray")
        page.wait_for_function("() => (document.querySelector('#ray-status') || {}).innerText?.includes('Resources')",
                               timeout=90_000)
        text = page.locator("#ray-status").inner_text()
        assert "Node status" in text and "0.0/1.0 CPU" in text
        link = page.locator("#ray-dashboard-link")
        assert link.get_attribute("href") == f"http://127.0.0.1:{head.dashboard_port}"
        screenshot(page, "ray")
        assert not page.errors
    finally:
        head.stop()


def test_ray_view_names_an_unreachable_cluster(start_dashboard, page, tmp_path):
    from .conftest import free_port

    d = start_dashboard(tmp_path, "--ray-address", f"127.0.0.1:{free_port()}")
    page.goto(d.url + "/ray")
    page.wait_for_selector("#ray-notice .notice-line", timeout=90_000)
    assert "Cannot read the Ray cluster at 127.0.0.1:" in page.locator("#ray-notice").inner_text()
