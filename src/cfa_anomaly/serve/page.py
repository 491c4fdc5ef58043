"""The service's page (GET /): one self-contained HTML file shipped as package data, served as is.

The page calls the service's own JSON API (GET /model, POST /predict/batch?overlay=true) and nothing else;
its Content-Security-Policy keeps it so (no script, style, image or request from anywhere but the page
and the service).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

PAGE_FILE = "page.html"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@lru_cache(maxsize=1)
def page_html() -> str:
    """The page's HTML (read once from the installed package)."""
    return resources.files(__package__).joinpath(PAGE_FILE).read_text(encoding="utf-8")
