"""Files the visitor downloads, carried inside the page as data links: nothing is written to disk or served later."""

from __future__ import annotations

import base64
import html


def download_link(text: str, filename: str, mime: str, label: str | None = None, *, elem_id: str = "") -> str:
    """HTML for a link that downloads ``text`` as ``filename``; the label says so in both languages unless given."""
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    name = html.escape(filename)
    shown = html.escape(label) if label is not None else f"{name} をダウンロード / Download {name}"
    id_attr = f' id="{html.escape(elem_id)}"' if elem_id else ""
    return f'<a{id_attr} download="{name}" href="data:{mime};charset=utf-8;base64,{data}">{shown}</a>'
