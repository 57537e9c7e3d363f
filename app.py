"""LLM-jp chat demo: read settings, build the app, launch."""

import logging

from webapp.factory import create_app
from webapp.settings import Settings
from webapp.ui import launch_options

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

settings = Settings()
demo = create_app(settings)

if __name__ == "__main__":
    # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are read by launch() itself.
    demo.queue(default_concurrency_limit=1).launch(**launch_options(settings))
