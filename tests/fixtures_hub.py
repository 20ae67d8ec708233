"""A local server speaking the Hub HTTP API, for push/pull tests without a network."""
