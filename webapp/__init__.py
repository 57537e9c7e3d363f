"""The Gradio web app: terms of use, recorded consent, gated chat, audit views.

Import ``webapp.factory.create_app`` to build it; this package's own import
stays light so that ``python -m db`` does not load Gradio or torch. It makes
Gradio's import, wherever it comes later in the process, skip rewriting
Gradio's type stubs (``webapp.gradio_import``).
"""

from webapp import gradio_import

gradio_import.install()
