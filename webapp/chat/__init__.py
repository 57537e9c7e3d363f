"""The chat: its handlers, streamed replies, what the messages mean, the export, the offered models and their availability."""
