"""Speed measurements: `segpress bench` (serving.py) and the batch job (batch.py)."""
