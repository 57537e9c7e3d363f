"""Models on OpenAI-compatible servers: the remote backend, and the vLLM engine processes the app starts."""
