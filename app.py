"""LLM-jp chat demo: read settings, build the app, launch."""

import logging

from webapp.boundary.serving import limit_connections, trim_overheads
from webapp.factory import create_app
from webapp.settings import Settings
from webapp.ui.page import launch_options

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

settings = Settings()
demo = create_app(settings)

if __name__ == "__main__":
    # GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are read by launch() itself. The queue's defaults
    # (one run at a time for events that set no limit) are the ones wanted: calling queue() again
    # would only rebuild the server app, a fifth of a second of every start.
    demo.launch(**launch_options(settings), prevent_thread_lock=True)
    # Gradio passes no server limits through launch(): they are set on the running server.
    limit_connections(
        demo,
        max_connections=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        keep_alive_s=settings.keep_alive_s,
    )
    trim_overheads(demo)
    demo.block_thread()
