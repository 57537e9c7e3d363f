"""The privacy notice on the Terms tab, from one file per language."""

from __future__ import annotations

from importlib import resources

import gradio as gr

_FILES = resources.files("webapp") / "data" / "privacy"


def notice(lang: str, retention_days: int | None) -> str:
    """The notice in ``lang`` ('ja' or 'en'), saying how long contact details are kept."""
    text = (_FILES / f"privacy.{lang}.md").read_text(encoding="utf-8")
    if retention_days is None:
        ja = "連絡先は、消去を依頼されるまで保存します。"
        en = "Contact details are kept until you ask for them to be erased."
    else:
        ja = f"連絡先は {retention_days} 日後に自動的に消去します(それ以前でも依頼があれば消去します)。"
        en = f"Contact details are erased automatically after {retention_days} days (or earlier, on request)."
    return text.replace("{retention_ja}", ja).replace("{retention_en}", en)


def render(retention_days: int | None, label: str | gr.i18n.I18nData = "個人情報の取り扱い / Privacy notice") -> None:
    """The notice, folded beside the acceptance form, Japanese first; ``label`` may be a translated one."""
    with gr.Accordion(label, open=False, elem_id="privacy-notice"), gr.Tabs():
        with gr.Tab("日本語", id="privacy-ja"):
            gr.Markdown(notice("ja", retention_days))
        with gr.Tab("English", id="privacy-en"):
            gr.Markdown(notice("en", retention_days))
