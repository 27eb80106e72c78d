"""Training code and its data: `segpress train llmlingua2|complm`. Serving
never imports this package."""
