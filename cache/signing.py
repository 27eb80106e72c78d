"""Values and keys bound to one deployment (--cache-secret).

Replicas that share a Redis and a secret derive two keys from it with
HMAC-SHA256, one per use, so neither can stand in for the other:

- key digests: a cache key's hash part is HMAC(key-key, the key's parts)
  instead of a plain sha256, so a replica or writer without the secret
  cannot compute the key of any (namespace, text) and so cannot address a
  tenant's entries;
- value tags: each stored value is MAGIC + HMAC(value-key, cache key + value)
  + value. A value whose tag does not verify (planted, altered, copied from
  another key, written without the secret) is a miss, computed again and
  overwritten.

Values are signed, not encrypted: whoever can read Redis can read them.
"""

import hashlib
import hmac

MIN_SECRET_BYTES = 16
MAGIC = b"SGPH"
_TAG = 32  # bytes of HMAC-SHA256


class Signer:
    def __init__(self, secret: bytes):
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the cache secret must be at least {MIN_SECRET_BYTES} bytes")
        self._key_key = hmac.new(secret, b"segpress cache keys v1", hashlib.sha256).digest()
        self._value_key = hmac.new(secret, b"segpress cache values v1", hashlib.sha256).digest()

    def digest(self):
        """A fresh keyed hash object for a cache key's parts (hashlib's
        update/hexdigest)."""
        return hmac.new(self._key_key, digestmod=hashlib.sha256)

    def sign(self, key: str, value: bytes) -> bytes:
        """`value` as stored under `key`: the tag binds it to that key."""
        return MAGIC + self._tag(key, value) + value

    def verify(self, key: str, stored: bytes) -> bytes | None:
        """The value stored under `key`, or None when its tag does not
        verify (including a value written without the secret)."""
        head = len(MAGIC) + _TAG
        if len(stored) < head or stored[: len(MAGIC)] != MAGIC:
            return None
        value = stored[head:]
        if not hmac.compare_digest(stored[len(MAGIC): head], self._tag(key, value)):
            return None
        return value

    def _tag(self, key: str, value: bytes) -> bytes:
        raw = key.encode("utf-8")
        mac = hmac.new(self._value_key, len(raw).to_bytes(8, "little") + raw, hashlib.sha256)
        mac.update(value)
        return mac.digest()
