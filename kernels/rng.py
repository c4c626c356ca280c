"""A small counter-based random generator whose whole state is an int64 array.

state = [key, counter]; draw number c of stream ``key`` is splitmix64(key + c * golden),
a pure function of (key, c).  The state lives in an array that the training loop updates
in place, so a run cut into chunks draws exactly the numbers of the same run in one
piece, and a checkpoint only has to save two integers.
"""
import functools
import os
import threading

import numpy as np
from numba import njit

from .config import INNER, refuse_python_calls

# its two helpers inlined into permutation_into: compiled apart, each was one more
# function for a first shuffled fit to compile and link
_HELPER = dict(INNER, inline="always")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(**_HELPER)
def _splitmix64(x):
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


@njit(**_HELPER)
def next_u64(state):
    """Next uint64 of the stream; advances state[1]."""
    x = np.uint64(state[0]) + np.uint64(state[1]) * _GOLDEN
    state[1] += 1
    return _splitmix64(x)


@njit(**INNER)
def permutation_into(perm, state):
    """perm <- a uniformly shuffled 0..n-1 (Fisher-Yates from the identity).

    Starting from the identity every time makes the permutation of an epoch depend only on
    the generator state, not on earlier epochs' permutations.  It draws n - 1 numbers
    (draws_per_permutation).
    """
    n = perm.shape[0]
    for i in range(n):
        perm[i] = i
    for i in range(n - 1, 0, -1):
        # modulo bias is below 2**-40 for any realistic n
        j = np.int64(next_u64(state) % np.uint64(i + 1))
        t = perm[i]
        perm[i] = perm[j]
        perm[j] = t


def draws_per_permutation(n):
    """How many numbers permutation_into draws for n samples: how far it advances the
    counter, state[1]."""
    return max(n - 1, 0)


def seed_state(seed):
    """A fresh generator state for an integer seed (or None: 64 bits of OS entropy)."""
    key = _os_key() if seed is None else _seeded_key(int(seed))
    return np.array([key - (1 << 64) if key >= 1 << 63 else key, 0], dtype=np.int64)


_ENTROPY_BYTES = 4096
_entropy = {"pool": b"", "at": 0}
_entropy_lock = threading.Lock()


def _os_key():
    """64 bits of OS entropy, taken from a pool that os.urandom fills 4 KB at a time (a
    system call for every model took 5 us of a small fit's model)."""
    with _entropy_lock:
        at = _entropy["at"]
        if at + 8 > len(_entropy["pool"]):
            _entropy["pool"] = os.urandom(_ENTROPY_BYTES)
            at = 0
        _entropy["at"] = at + 8
        return int.from_bytes(_entropy["pool"][at:at + 8], "little")


def _forget_entropy():
    """In a forked child: a pool of its own (it must not repeat its parent's keys), and
    a fresh lock (another thread of the parent may have held it at the fork)."""
    global _entropy_lock
    _entropy_lock = threading.Lock()
    _entropy.update(pool=b"", at=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_entropy)


@functools.lru_cache(maxsize=1024)
def _seeded_key(seed):
    """The stream key of an integer seed: SeedSequence's first uint64 (12 us; every
    seeded fit asks, so remembered)."""
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


refuse_python_calls(globals())  # the INNER functions: TypeError from Python, not a crash
