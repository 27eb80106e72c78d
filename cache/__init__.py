"""Segment cache: keys, value codec, and the Redis-backed store."""
