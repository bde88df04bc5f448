"""The one route that serves files: figures and exported configs from inside the runs directory, read-only.

Absolute paths, `..`, backslashes and symlinks that resolve outside the runs directory are refused (403);
only image, YAML and JSON files are served."""

from __future__ import annotations

from pathlib import Path

from .discover import safe_join

PREFIX = "/files/"
SERVED = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml",
          ".yaml": "text/plain; charset=utf-8", ".yml": "text/plain; charset=utf-8", ".json": "application/json"}


def register(server, root: Path) -> None:
    """Serve GET /files/<path> from the Flask server; every other path under /files/ is refused too."""
    from flask import abort, request, send_file

    # a before_request hook rather than a route: Dash's catch-all route would answer the paths a route's
    # converter does not match (e.g. /files//etc/passwd) with its index page; here every /files/ path is judged
    @server.before_request
    def serve_file():
        if not request.path.startswith(PREFIX):
            return None
        if request.method not in ("GET", "HEAD"):
            abort(405)
        target = safe_join(root, request.path[len(PREFIX):])
        if target is None or target.suffix.lower() not in SERVED:
            abort(403)
        if not target.is_file():
            abort(404)
        resp = send_file(target, mimetype=SERVED[target.suffix.lower()], max_age=0)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        return resp
