"""The HTTP boundary against strangers: the request guard, bounded inputs per event, rate limits and connection limits."""
