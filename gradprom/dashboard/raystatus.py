"""Ask a Ray cluster for its status and its dashboard's URL, as a subprocess of the Ray view (so a cluster that
does not answer can never hang the dashboard, and Ray is never imported into the dashboard's process).

It reads what `ray status` reads (the autoscaler's status from the GCS key-value store, through the same calls
as `ray status` in Ray 2.55), plus the Ray dashboard's URL the head stores there; it changes nothing.
Usage: python -m gradprom.dashboard.raystatus HOST:PORT   (prints one JSON object)
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

TIMEOUT_S = 15.0  # importing Ray and asking the GCS takes a few seconds; an absent cluster would take 30 s


def query(address: str) -> dict[str, Any]:
    """{"address", "status" (the text `ray status` prints), "dashboard_url" or None}; runs inside the subprocess."""
    import ray
    from ray._private import ray_constants, services
    from ray.autoscaler._private.commands import debug_status

    if address == "auto":  # only "auto" is resolved: Ray would also rewrite 127.0.0.1 to this node's IP
        address = services.canonicalize_bootstrap_address_or_die(address)
    gcs = ray._raylet.GcsClient(address=address)
    ray.experimental.internal_kv._initialize_internal_kv(gcs)
    status = gcs.internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS.encode())
    error = gcs.internal_kv_get(ray_constants.DEBUG_AUTOSCALING_ERROR.encode())
    url = gcs.internal_kv_get(b"webui:url", namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    url = url.decode() if url else None
    if url and not url.startswith(("http://", "https://")):
        url = "http://" + url
    return {"address": address, "status": debug_status(status, error, verbose=False, address=address),
            "dashboard_url": url}


def _ask(address: str) -> dict[str, Any]:
    """Run the query in a subprocess; {"error": ...} when it cannot be read."""
    try:
        out = subprocess.run([sys.executable, "-m", __name__, address], capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer from {address} within {TIMEOUT_S:.0f} s"}
    except OSError as e:
        return {"error": str(e)}
    if out.returncode == 0 and out.stdout.strip():
        try:
            return json.loads(out.stdout.strip().splitlines()[-1])
        except ValueError:
            pass
    return {"error": (out.stderr.strip().splitlines() or ["no answer"])[-1][:300]}


_lock = threading.Lock()
_latest: dict[str, tuple[float, dict[str, Any]]] = {}
_asking: set[str] = set()


def status(address: str, max_age_s: float = 5.0) -> dict[str, Any] | None:
    """The latest status of the cluster (None until the first answer). Asking runs in a background thread, so
    a page poll never waits on a slow or absent cluster (and a newer poll never discards an older answer)."""
    with _lock:
        hit = _latest.get(address)
        stale = hit is None or time.monotonic() - hit[0] >= max_age_s
        if stale and address not in _asking:
            _asking.add(address)
            threading.Thread(target=_refresh, args=(address,), daemon=True).start()
    return hit[1] if hit else None


def _refresh(address: str) -> None:
    result = _ask(address)
    with _lock:
        _latest[address] = (time.monotonic(), result)
        _asking.discard(address)


if __name__ == "__main__":
    try:
        print(json.dumps(query(sys.argv[1])))
    except Exception as e:  # reported on the page, not as a traceback
        print(f"cannot read the cluster at {sys.argv[1]!r}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
