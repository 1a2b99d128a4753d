"""The ``/docs`` page: the operations of the OpenAPI document rendered on the server as
plain HTML, so the page needs no script, no network asset and no CDN; its CSP allows
nothing but its own inline style (by hash)."""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Any

__all__ = ["DOCS_CSP", "render_docs"]

_STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem}"
    "code{background:#f3f3f3;padding:0 .2rem}"
    ".m{display:inline-block;width:4.5rem;font-weight:bold}"
    ".get{color:#1565c0}.post{color:#2e7d32}.patch{color:#8e24aa}.delete{color:#c62828}"
    "details{margin:.3rem 0;border-bottom:1px solid #eee}summary{cursor:pointer}"
    "pre{white-space:pre-wrap}table{border-collapse:collapse}td{padding:0 .6rem}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

DOCS_CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def render_docs(openapi: dict[str, Any]) -> str:
    info = openapi["info"]
    by_tag: dict[str, list[str]] = {}
    for path, operations in openapi["paths"].items():
        for method, op in operations.items():
            params = "".join(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                f"<td>{escape(p.get('description', ''))}</td></tr>"
                for p in op.get("parameters", [])
            )
            body = ""
            if "requestBody" in op:
                media = next(iter(op["requestBody"]["content"]))
                body = f"<p>Body: <code>{escape(media)}</code></p>"
            item = (
                f"<details><summary><span class='m {method}'>{method.upper()}</span>"
                f"<code>{escape(path)}</code> — {escape(op['summary'])}</summary>"
                f"<pre>{escape(op.get('description', ''))}</pre>{body}"
                + (f"<table>{params}</table>" if params else "")
                + "</details>"
            )
            by_tag.setdefault(op["tags"][0], []).append(item)
    sections = "".join(
        f"<h2>{escape(tag)}</h2>{''.join(items)}" for tag, items in sorted(by_tag.items())
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(info['title'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(info['title'])}</h1><p>{escape(info.get('description', ''))}</p>"
        "<p>The machine-readable document: <a href='/openapi.json'>/openapi.json</a>. "
        "Errors are JSON <code>google.rpc.Status</code> objects.</p>"
        f"{sections}</body></html>"
    )
