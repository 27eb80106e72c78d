"""A small in-process LRU in front of Redis, bounded by bytes.

What it holds never changes once made: a context's segmentation (a pure
function of the compressor and the text) and decoded segment values (content
addressed: the key names the namespace, compressor, model identity and
text). So a hit here is exactly what Redis, or the model, would have given,
on any replica. Thread-safe: the CPU pool and the event loop both use it.
"""

import threading
from collections import OrderedDict


class LocalCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = self.misses = 0
        self._items: OrderedDict = OrderedDict()  # key -> (value, size)
        self._lock = threading.Lock()

    def __bool__(self) -> bool:  # off when it may hold nothing
        return self.max_bytes > 0

    def get(self, key):
        """The value, or None (counted as a hit or a miss)."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key, value, size: int) -> None:
        """Keeps `value` (about `size` bytes), dropping the least recently
        used entries past max_bytes; a value larger than the whole cache is
        not kept."""
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._items)
