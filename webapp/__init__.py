"""The Gradio web app: terms of use, recorded acceptance, gated chat."""

from webapp.factory import create_app
from webapp.ui import launch_options

__all__ = ["create_app", "launch_options"]
