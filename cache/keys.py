"""Cache keys.

A key names one compressed segment: sha256 over the namespace, compressor
name, model fingerprint and segment text, under a readable prefix:

    segpress:v1:{namespace}:{compressor}:{sha256 hex}

Each segment is its own key, so keys spread over Redis Cluster slots; the
store never assumes two keys share a slot.
"""

import hashlib

PREFIX = "segpress:v1"


def segment_key(namespace: str, compressor: str, fingerprint: str, text: str) -> str:
    h = hashlib.sha256()
    for part in (namespace, compressor, fingerprint, text):
        data = part.encode("utf-8")
        # Length-prefix every part so ("ab", "c") and ("a", "bc") differ.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return f"{PREFIX}:{namespace}:{compressor}:{h.hexdigest()}"
