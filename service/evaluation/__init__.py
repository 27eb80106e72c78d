"""`segpress eval`: compression quality measured with a reader LLM."""
