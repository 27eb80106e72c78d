"""Cache keys.

A key names one compressed segment: sha256 over the namespace, compressor
name, model fingerprint and segment text, under a readable prefix:

    segpress:v1:{namespace}:{compressor}:{sha256 hex}

With a deployment secret (cache/signing.py) the hash is an HMAC keyed from
it, so only replicas holding the secret can name a segment's key; without
one the key is exactly as above.

Each segment is its own key, so keys spread over Redis Cluster slots; the
store never assumes two keys share a slot.
"""

import hashlib

PREFIX = "segpress:v1"


def segment_key(namespace: str, compressor: str, fingerprint: str, text: str,
                signer=None) -> str:
    """The key; `signer` (a cache.signing.Signer) keys the hash."""
    h = hashlib.sha256() if signer is None else signer.digest()
    for part in (namespace, compressor, fingerprint, text):
        data = part.encode("utf-8")
        # Length-prefix every part so ("ab", "c") and ("a", "bc") differ.
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return f"{PREFIX}:{namespace}:{compressor}:{h.hexdigest()}"
