"""The one route that serves files: figures and exported configs from inside the runs directory, read-only.

Absolute paths, `..`, backslashes and symlinks that resolve outside the runs directory are refused (403), and
so is every type the platform does not write. Anyone who can write into the runs directory (shared storage, a
trial on another host, a downloaded run) controls these bytes, so every answer carries a policy that forbids
scripts, plugins and same-origin access (`sandbox`), `nosniff`, and active types (SVG, HTML) are sent only as
downloads, never rendered in the dashboard's origin."""

from __future__ import annotations

from pathlib import Path

from .discover import safe_join

PREFIX = "/files/"
TEXT = "text/plain; charset=utf-8"
# what the platform writes into run directories and the pages link: figures, configs, run.json, logs
SERVED = {".png": "image/png", ".yaml": TEXT, ".yml": TEXT, ".json": "application/json", ".log": TEXT,
          ".txt": TEXT}
# active content (it can carry script): only ever a download, as opaque bytes
DOWNLOAD_ONLY = {".svg", ".svgz", ".html", ".htm", ".xhtml", ".xml"}
# exported models (`gradprom export`, written to <run>/exports/): downloads, and only from that folder (a
# checkpoint elsewhere in the run is still refused)
EXPORTS = "exports"
EXPORTED = {".onnx", ".pt"}
# no script, no plugin, no fetch, no frame; `sandbox` also gives the document an opaque origin
POLICY = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"


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
        suffix = target.suffix.lower() if target is not None else ""
        exported = target is not None and suffix in EXPORTED and target.parent.name == EXPORTS
        if target is None or (suffix not in SERVED and suffix not in DOWNLOAD_ONLY and not exported):
            abort(403)
        try:
            found = target.is_file()
        except OSError:  # e.g. a name too long for the file system: nothing is there
            found = False
        if not found:
            abort(404)
        if suffix in SERVED:
            resp = send_file(target, mimetype=SERVED[suffix], max_age=0)
        else:
            resp = send_file(target, mimetype="application/octet-stream", as_attachment=True,
                             download_name=target.name, max_age=0)
        resp.headers["Content-Security-Policy"] = POLICY
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        return resp
