"""`segpress batch`: compress a whole document store ahead of time (see cli.py)."""
