"""Eviction policies for one cache dir, swappable behind one small interface.

A policy is also the dir's index: it maps a block key to the block's size and an opaque
integer ``tag`` (the store keeps the block's checksum there, which names its file). Both
live in one dict, with the per-entry state packed into a single ``int``, to keep the whole
index under 200 bytes per block in CPython (``tests/cachenode/test_eviction.py`` holds it
to that).

Policies count bytes, not entries: the last block of an object is shorter than the others.
They never touch files; the store removes the file of every victim a policy hands out.
Everything here runs on the event loop thread only, so nothing is locked.

- :class:`S3FIFOPolicy` (the default): S3-FIFO (Yang et al., SOSP 2023). New blocks enter a
  small FIFO (~10% of bytes); a block hit while there moves to the main FIFO, the rest leave
  quickly and are remembered in a ghost set, so one-hit wonders such as a backtest's
  sequential scan do not flush the hot set. Hits only set a 2-bit counter: no list moves,
  which keeps the hit path cheap.
- :class:`LRUPolicy`: least recently used, for comparison (``loadtest/eviction_sim.py``).

:data:`POLICIES` is the one table of policy names: configuration takes its choices from it
and :func:`make_policy` builds from it. A policy is an index with its own memory budget,
lookups that are not hits and victims handed to the caller, which is why neither is a
general-purpose LRU cache (``cachetools`` is used where one is all that is needed).
"""

from __future__ import annotations

import abc
import itertools
import operator
import sys
from array import array
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator, Sequence
from typing import NamedTuple

from clientlib.errors import ConfigError

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "EvictionPolicy",
    "LRUPolicy",
    "S3FIFOPolicy",
    "Victim",
    "make_policy",
]

_MASK64 = (1 << 64) - 1
#: Block sizes are at most 64 MiB; 32 bits leave room without widening the packed int.
_NBYTES_BITS = 32
_NBYTES_MASK = (1 << _NBYTES_BITS) - 1


class Victim(NamedTuple):
    """An entry a policy has removed from its index; the caller deletes its data."""

    key: Hashable
    nbytes: int
    tag: int


class EvictionPolicy(abc.ABC):
    """The index of one cache dir and the order in which its blocks leave.

    ``key`` is any hashable (the store uses the block id as a 128-bit ``int``: 48 bytes,
    against 64 for a 16-byte ``bytes``). ``tag`` is a non-negative int of up to 64 bits that
    the policy stores and returns untouched.
    """

    name: str = ""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of resident entries."""

    @abc.abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is resident; does not count as a hit."""

    @property
    @abc.abstractmethod
    def nbytes(self) -> int:
        """Sum of the sizes of all resident entries."""

    @abc.abstractmethod
    def insert(self, key: Hashable, nbytes: int, tag: int = 0) -> None:
        """Admit a new entry (replacing ``key`` if it is already resident)."""

    @abc.abstractmethod
    def lookup(self, key: Hashable) -> tuple[int, int] | None:
        """``(nbytes, tag)`` of a resident entry, without counting a hit; else None."""

    @abc.abstractmethod
    def touch(self, key: Hashable) -> bool:
        """Count a hit on ``key``; False when it is not resident."""

    @abc.abstractmethod
    def remove(self, key: Hashable) -> tuple[int, int] | None:
        """Drop ``key`` (not an eviction choice: the ghost does not learn it)."""

    @abc.abstractmethod
    def pop_victim(self) -> Victim | None:
        """Choose the next entry to evict, remove it and return it; None when empty."""

    @abc.abstractmethod
    def keys(self) -> Iterator[Hashable]:
        """The resident keys, in no promised order."""

    def entries(self) -> Iterator[tuple[Hashable, int, int]]:
        """``(key, nbytes, tag)`` of every resident entry, in no promised order."""
        for key in self.keys():
            entry = self.lookup(key)
            if entry is not None:
                yield key, entry[0], entry[1]

    def load(self, keys: Sequence[Hashable], nbytes: Sequence[int], tags: Sequence[int]) -> None:
        """Admit entries found on disk when a dir is opened, given column by column.

        Columns, so that a policy can load a million entries with C-level loops (``map``,
        ``dict.update``) in a fraction of a second. Keys must be distinct and not resident.
        """
        _check_columns(keys, nbytes, tags)
        for key, size, tag in zip(keys, nbytes, tags, strict=True):
            self.insert(key, size, tag)

    def victims(self) -> Iterator[Victim]:
        """Pop victims until the caller stops iterating or the policy is empty."""
        while (victim := self.pop_victim()) is not None:
            yield victim


def _check_columns(keys: Sequence[Hashable], nbytes: Sequence[int], tags: Sequence[int]) -> None:
    """Validate bulk-load columns with C-level passes only (a million entries at a start)."""
    if not len(keys) == len(nbytes) == len(tags):
        raise ValueError("keys, nbytes and tags must have the same length")
    if not keys:
        return
    if (not _unsigned_array(nbytes) and min(nbytes) < 0) or max(nbytes) > _NBYTES_MASK:
        raise ValueError(f"entry sizes must be in [0, 2**{_NBYTES_BITS})")
    if not _unsigned_array(tags) and (min(tags) < 0 or max(tags) > _MASK64):
        raise ValueError("tags must be non-negative ints of at most 64 bits")


def _unsigned_array(column: Sequence[int]) -> bool:
    """An array of unsigned ints of at most 64 bits needs no range check."""
    return isinstance(column, array) and column.typecode in "BHILQ" and column.itemsize <= 8


def _check_entry(nbytes: int, tag: int) -> None:
    if not 0 <= nbytes <= _NBYTES_MASK:
        raise ValueError(f"entry size {nbytes} outside [0, 2**{_NBYTES_BITS})")
    if not 0 <= tag <= _MASK64:
        raise ValueError("tag must be a non-negative int of at most 64 bits")


class LRUPolicy(EvictionPolicy):
    """Least recently used: the classic baseline, weak against scans.

    An ``OrderedDict`` (C implementation) keeps the order; each entry costs about 50 bytes
    more than in :class:`S3FIFOPolicy`, and every hit moves a list node.
    """

    name = "lru"

    def __init__(self) -> None:
        # value: tag << 32 | nbytes
        self._entries: OrderedDict[Hashable, int] = OrderedDict()
        self._nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def insert(self, key: Hashable, nbytes: int, tag: int = 0) -> None:
        _check_entry(nbytes, tag)
        self.remove(key)
        self._entries[key] = (tag << _NBYTES_BITS) | nbytes
        self._nbytes += nbytes

    def load(self, keys: Sequence[Hashable], nbytes: Sequence[int], tags: Sequence[int]) -> None:
        _check_columns(keys, nbytes, tags)
        states = map(operator.lshift, tags, itertools.repeat(_NBYTES_BITS))
        self._entries.update(zip(keys, map(operator.or_, states, nbytes), strict=True))
        self._nbytes += sum(nbytes)

    def lookup(self, key: Hashable) -> tuple[int, int] | None:
        state = self._entries.get(key)
        if state is None:
            return None
        return state & _NBYTES_MASK, state >> _NBYTES_BITS

    def touch(self, key: Hashable) -> bool:
        try:
            self._entries.move_to_end(key)
        except KeyError:
            return False
        return True

    def remove(self, key: Hashable) -> tuple[int, int] | None:
        state = self._entries.pop(key, None)
        if state is None:
            return None
        nbytes = state & _NBYTES_MASK
        self._nbytes -= nbytes
        return nbytes, state >> _NBYTES_BITS

    def pop_victim(self) -> Victim | None:
        if not self._entries:
            return None
        key, state = self._entries.popitem(last=False)
        nbytes = state & _NBYTES_MASK
        self._nbytes -= nbytes
        return Victim(key, nbytes, state >> _NBYTES_BITS)

    def keys(self) -> Iterator[Hashable]:
        return iter(list(self._entries))


# S3-FIFO packed state, low bits to high: tag (64), queue (2), freq (2), nbytes (32). The tag
# at the bottom lets a bulk load build states with one ``|`` per entry (see ``load``).
_QUEUE_SHIFT = 64
_SMALL = 1 << _QUEUE_SHIFT
_MAIN = 2 << _QUEUE_SHIFT
_QUEUE_MASK = 3 << _QUEUE_SHIFT
_FREQ_SHIFT = 66
_FREQ_MASK = 3 << _FREQ_SHIFT
_SIZE_SHIFT = 68
#: Above this many dict bytes per entry, :meth:`S3FIFOPolicy._compact_dict` copies the dict.
_DICT_BYTES_PER_ENTRY = 64


class _GhostSet:
    """Approximate set of recently evicted keys, at 8-16 bytes per remembered key.

    A direct-mapped table of 64-bit fingerprints: adding a key overwrites whatever was in its
    slot. With as many slots as the cache holds entries, a key is forgotten after about that
    many later additions, which is the lifetime a FIFO ghost queue of that length gives. A
    FIFO of keys would cost ~100 bytes per key (the key object, a dict slot and a deque slot)
    and break the memory budget. A forgotten key or a fingerprint collision only costs one
    block the fast path to the main queue.
    """

    _MIN_SLOTS = 64

    def __init__(self) -> None:
        self._bits = 6
        self._slots = array("Q", [0]) * self._MIN_SLOTS
        self._used = 0  # slots holding a fingerprint

    @staticmethod
    def _fingerprint(key: Hashable) -> int:
        # Multiplying by an odd constant mixes sequential hashes (small ints hash to
        # themselves) so that the top bits, which pick the slot, are spread.
        return ((hash(key) * 0x9E3779B97F4A7C15) & _MASK64) or 1

    def _slot(self, fingerprint: int) -> int:
        return fingerprint >> (64 - self._bits)

    def add(self, key: Hashable) -> None:
        fp = self._fingerprint(key)
        slot = self._slot(fp)
        if not self._slots[slot]:
            self._used += 1
        self._slots[slot] = fp

    def pop(self, key: Hashable) -> bool:
        """Forget ``key``; True if it was remembered."""
        fp = self._fingerprint(key)
        slot = self._slot(fp)
        if self._slots[slot] != fp:
            return False
        self._slots[slot] = 0
        self._used -= 1
        return True

    def resize(self, entries: int) -> None:
        """Follow the cache's entry count: double when it passes the slot count, halve below
        a quarter of it (the gap keeps a count hovering at a power of two from rehashing on
        every call)."""
        slots = len(self._slots)
        if entries > slots:
            bits = (entries - 1).bit_length()
        elif entries < slots // 4 and slots > self._MIN_SLOTS:
            bits = max(6, (max(entries, 1) - 1).bit_length() + 1)
        else:
            return
        old = self._slots
        self._bits = bits
        self._slots = new = array("Q", [0]) * (1 << bits)
        if not self._used:
            return
        self._used = 0
        shift = 64 - bits
        for fp in old:
            if fp:
                if not new[fp >> shift]:
                    self._used += 1
                new[fp >> shift] = fp


class S3FIFOPolicy(EvictionPolicy):
    """S3-FIFO: a small probationary FIFO, a main FIFO with 2-bit frequency, a ghost set.

    Insert: into main if the ghost remembers the key (it was evicted from small recently and
    came back), else into small. Hit: ``freq = min(freq + 1, 3)``, nothing moves. Evict: from
    small while it holds at least ``small_ratio`` of the resident bytes (or main is empty):
    its oldest entry moves to main if it was hit since admission, else it leaves and the ghost
    remembers it. Otherwise from main: an entry with ``freq > 0`` is reinserted with
    ``freq - 1`` (CLOCK-like), one with 0 leaves.

    The share of small is taken of the resident bytes rather than a fixed capacity, so the
    policy needs no size and follows the dir's limit as the store applies it.

    The queues are deques of keys with lazy deletion: :meth:`remove` only drops the dict
    entry, and a popped key whose state no longer names that queue is skipped. A key removed
    and re-admitted before its stale copy is popped leaves that copy in the queue, which can
    make it leave a little earlier than strict FIFO order; the deques are compacted when stale
    copies outnumber live ones.
    """

    name = "s3fifo"

    def __init__(self, small_ratio: float = 0.1) -> None:
        if not 0.0 < small_ratio < 1.0:
            raise ConfigError(f"S3-FIFO small_ratio {small_ratio} must be in (0, 1)")
        self.small_ratio = small_ratio
        self._state: dict[Hashable, int] = {}
        self._small: deque[Hashable] = deque()
        self._main: deque[Hashable] = deque()
        self._small_bytes = 0
        self._main_bytes = 0
        self._small_count = 0
        self._ghost = _GhostSet()

    def __len__(self) -> int:
        return len(self._state)

    def __contains__(self, key: object) -> bool:
        return key in self._state

    @property
    def nbytes(self) -> int:
        return self._small_bytes + self._main_bytes

    @property
    def small_bytes(self) -> int:
        """Bytes in the small FIFO (tests and the simulator look at the split)."""
        return self._small_bytes

    def insert(self, key: Hashable, nbytes: int, tag: int = 0) -> None:
        _check_entry(nbytes, tag)
        if key in self._state:
            self.remove(key)
        base = (nbytes << _SIZE_SHIFT) | tag
        if self._ghost.pop(key):
            self._state[key] = base | _MAIN
            self._main.append(key)
            self._main_bytes += nbytes
        else:
            self._state[key] = base | _SMALL
            self._small.append(key)
            self._small_bytes += nbytes
            self._small_count += 1
        self._ghost.resize(len(self._state))
        if sys.getsizeof(self._state) > _DICT_BYTES_PER_ENTRY * len(self._state) + 65536:
            self._compact_dict()

    def load(self, keys: Sequence[Hashable], nbytes: Sequence[int], tags: Sequence[int]) -> None:
        """Admit entries found on disk at start straight into main, with freq 0.

        They earned their place before the restart; putting a whole disk's worth through
        the small queue would make the first evictions after a restart keep the newest
        arrivals over them. Keys must be distinct and not resident.
        """
        _check_columns(keys, nbytes, tags)
        # Blocks have few distinct sizes: precompute the high bits once per size.
        high = {size: (size << _SIZE_SHIFT) | _MAIN for size in set(nbytes)}
        states = map(operator.or_, map(high.__getitem__, nbytes), tags)
        self._state.update(zip(keys, states, strict=True))
        self._main.extend(keys)
        self._main_bytes += sum(nbytes)
        self._ghost.resize(len(self._state))

    def lookup(self, key: Hashable) -> tuple[int, int] | None:
        state = self._state.get(key)
        if state is None:
            return None
        return state >> _SIZE_SHIFT, state & _MASK64

    def touch(self, key: Hashable) -> bool:
        state = self._state.get(key)
        if state is None:
            return False
        if (state & _FREQ_MASK) != _FREQ_MASK:
            self._state[key] = state + (1 << _FREQ_SHIFT)
        return True

    def remove(self, key: Hashable) -> tuple[int, int] | None:
        state = self._state.pop(key, None)
        if state is None:
            return None
        nbytes = state >> _SIZE_SHIFT
        if state & _QUEUE_MASK == _SMALL:
            self._small_bytes -= nbytes
            self._small_count -= 1
        else:
            self._main_bytes -= nbytes
        self._compact_if_stale()
        return nbytes, state & _MASK64

    def pop_victim(self) -> Victim | None:
        state_of = self._state
        while state_of:
            from_small = bool(self._small) and (
                not self._main or self._small_bytes >= self.small_ratio * self.nbytes
            )
            if from_small:
                key = self._small.popleft()
                state = state_of.get(key)
                if state is None or state & _QUEUE_MASK != _SMALL:
                    continue  # stale copy of a removed (or moved) key
                nbytes = state >> _SIZE_SHIFT
                self._small_bytes -= nbytes
                self._small_count -= 1
                if state & _FREQ_MASK:
                    # Hit while on probation: promote to main, frequency starts over.
                    state_of[key] = (state & ~(_FREQ_MASK | _QUEUE_MASK)) | _MAIN
                    self._main.append(key)
                    self._main_bytes += nbytes
                    continue
                del state_of[key]
                self._ghost.add(key)
                return Victim(key, nbytes, state & _MASK64)
            key = self._main.popleft()
            state = state_of.get(key)
            if state is None or state & _QUEUE_MASK != _MAIN:
                continue
            if state & _FREQ_MASK:
                state_of[key] = state - (1 << _FREQ_SHIFT)
                self._main.append(key)
                continue
            del state_of[key]
            nbytes = state >> _SIZE_SHIFT
            self._main_bytes -= nbytes
            return Victim(key, nbytes, state & _MASK64)
        return None

    def keys(self) -> Iterator[Hashable]:
        return iter(list(self._state))

    def _compact_dict(self) -> None:
        """Copy the dict into a minimal-sized one.

        Under churn (one insert and one eviction per put) a dict fills its entry array with
        deleted slots, and CPython then resizes it to three times the live count, enough to
        break the 200-byte budget. The copy happens about once per turnover of the whole
        cache.
        """
        self._state = dict(self._state)

    def _compact_if_stale(self) -> None:
        """Drop stale copies once they outnumber live keys, so removals cannot grow memory."""
        main_count = len(self._state) - self._small_count
        if len(self._small) > 2 * self._small_count + 1024:
            self._small = self._live(self._small, _SMALL)
        if len(self._main) > 2 * main_count + 1024:
            self._main = self._live(self._main, _MAIN)

    def _live(self, queue: deque[Hashable], which: int) -> deque[Hashable]:
        # Keep the newest copy of each key: that is the one its current admission made.
        seen: set[Hashable] = set()
        kept: list[Hashable] = []
        for key in reversed(queue):
            state = self._state.get(key)
            if state is not None and state & _QUEUE_MASK == which and key not in seen:
                seen.add(key)
                kept.append(key)
        kept.reverse()
        return deque(kept)


#: Every eviction policy by its configuration name (the cachenode ``eviction`` setting):
#: the one list of the names a node accepts.
POLICIES: dict[str, type[EvictionPolicy]] = {
    S3FIFOPolicy.name: S3FIFOPolicy,
    LRUPolicy.name: LRUPolicy,
}

#: The policy a node uses unless configured otherwise.
DEFAULT_POLICY = S3FIFOPolicy.name


def make_policy(name: str) -> EvictionPolicy:
    """A new, empty policy by its name in :data:`POLICIES`; ConfigError for another name."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown eviction policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
    return cls()
