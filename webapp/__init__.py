"""The Gradio web app: terms of use, recorded consent, gated chat, audit views.

Import ``webapp.factory.create_app`` to build it; this package's own import
stays light so that ``python -m db`` does not load Gradio or torch.
"""
