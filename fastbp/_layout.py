"""Where each layer's weights and biases sit in the flat parameter vector."""
import functools

import numpy as np


class Layout:
    """Offsets of a network's parameter blocks (DESIGN.md: the flat parameter vector).

    Layer l owns a row-major (sizes[l], sizes[l+1]) weight block at w_off[l], followed by
    its sizes[l+1] biases at b_off[l] (-1 when the network has no biases).
    """

    def __init__(self, sizes, bias):
        self.sizes = tuple(int(s) for s in sizes)
        self.bias = bool(bias)
        self.shapes = list(zip(self.sizes[:-1], self.sizes[1:]))
        w_off, b_off = [], []
        pos = 0
        for n_in, n_out in self.shapes:
            w_off.append(pos)
            pos += n_in * n_out
            if self.bias:
                b_off.append(pos)
                pos += n_out
            else:
                b_off.append(-1)
        self.n_params = pos
        self.sizes_arr = np.array(self.sizes, dtype=np.int64)
        self.w_off = np.array(w_off, dtype=np.int64)
        self.b_off = np.array(b_off, dtype=np.int64)

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def of(sizes, bias):
        """The Layout of ``sizes`` (a tuple of ints) with or without biases, made once
        and shared by every model of that shape (a Layout is never changed after it is
        made): a model made in a loop (a sweep, an ensemble's members) need not
        compute its offsets again."""
        return Layout(sizes, bias)

    @property
    def n_layers(self):
        return len(self.shapes)

    def weight_views(self, params):
        return [params[o:o + a * b].reshape(a, b) for o, (a, b) in zip(self.w_off, self.shapes)]

    def bias_views(self, params):
        if not self.bias:
            return None
        return [params[o:o + b] for o, (_, b) in zip(self.b_off, self.shapes)]
