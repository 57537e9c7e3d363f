"""The page's building blocks: the page with its tabs, the Terms tab and the Chat tab."""
