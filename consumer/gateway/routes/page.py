"""``GET /``: the page (``consumer/gateway/page.py``: the file and its locked-down headers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from consumer.gateway.page import page_headers, page_html

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def page() -> HTMLResponse:
    html = page_html()
    return HTMLResponse(html, headers=page_headers(html))
