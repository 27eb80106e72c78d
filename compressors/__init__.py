"""Compressors: segmenter, the compressors themselves, and their registry."""
