"""Fingerprints of iterated inputs, so a resume can tell when the input changed.

A fingerprint is computed only from stable values: the length when the input has
one, and digests of the canonical JSON of the items (or of ``key(item)``) at a
fixed set of sample indices: 0..7, then every power of two. The same indices are
sampled whatever the input's size, so an input that grew at the end keeps its
samples, and ``O(log n)`` items are hashed. Never ``repr`` (it holds memory
addresses) and never ``hash()`` (salted per process).

On resume only the samples *before* the checkpointed position matter: the items
after it have not been processed yet and may change freely.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable
from typing import Any

from ._checkpoint import encode_value
from .errors import InputChanged

SAMPLES: tuple[int, ...] = tuple(sorted(set(range(8)) | {1 << k for k in range(3, 62)}))


def sample_indices(lo: int, hi: int) -> list[int]:
    """The sample indices in ``[lo, hi)``."""
    return list(SAMPLES[bisect.bisect_left(SAMPLES, lo) : bisect.bisect_left(SAMPLES, hi)])


def digest(item: Any, key: Callable[[Any], Any] | None) -> str | None:
    """A short stable digest of ``key(item)`` (or ``item``), or None when it is not JSON."""
    import json

    try:
        value = encode_value(key(item) if key is not None else item)
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except Exception:  # noqa: BLE001 - anything unencodable simply has no digest
        return None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Fingerprinter:
    """Builds a fingerprint as items pass by, and checks it against a stored one.

    ``stored`` is the fingerprint saved with the checkpoint (or None); ``position``
    is how many items were done. :meth:`see` is called with each chunk of items in
    order (during a skip and during iteration) and raises :class:`InputChanged` at
    the first sample before ``position`` whose digest differs.
    """

    def __init__(
        self,
        *,
        length: int | None,
        key: Callable[[Any], Any] | None,
        stored: dict[str, Any] | None,
        position: int,
        describe: str,
    ) -> None:
        self.key = key
        self.samples: dict[str, str] = {}
        self.length = length
        self.enabled = True
        self.position = position
        self.describe = describe
        self._expect: dict[str, str] = {}
        if stored:
            self._expect = {k: v for k, v in (stored.get("samples") or {}).items() if int(k) < position}
            old_len = stored.get("len")
            if length is not None and position > length:
                raise InputChanged(
                    f"{describe}: the input now has {length} items but {position} were already done "
                    f"(it had {old_len}); it changed under the checkpoint"
                )

    def see(self, base: int, items: Any) -> None:
        """Record the samples among ``items``, which start at index ``base``."""
        if not self.enabled:
            return
        for idx in sample_indices(base, base + len(items)):
            d = digest(items[idx - base], self.key)
            if d is None:
                if idx == 0:
                    self.enabled = False  # not JSON items: fall back to the length alone
                    self.samples.clear()
                    return
                continue
            k = str(idx)
            self.samples[k] = d
            want = self._expect.get(k)
            if want is not None and want != d:
                raise InputChanged(
                    f"{self.describe}: item {idx} differs from the item done at that position in the "
                    "checkpointed run, so the input changed before the checkpoint"
                )

    def result(self) -> dict[str, Any]:
        """The fingerprint to store: the length and the samples seen so far (kept when unseen)."""
        samples = dict(self._expect)
        samples.update(self.samples)
        return {"len": self.length, "samples": samples if self.enabled else {}}
