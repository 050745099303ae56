"""np.einsum lowered to primitives: diagonals (a slice of the flattened axes), sums, transposes,
broadcasting products and batched matrix products (matmul's batch axes and transpose flags).

The subscripts are parsed into one list of labels per operand ('...' becomes one label per
broadcast axis, right-aligned across operands as NumPy does). Each operand is then reduced on
its own: repeated labels ('ii') take the diagonal, size-1 axes of a label that is longer
elsewhere are dropped (that is broadcasting), and labels no other operand and not the output
use are summed. The operands are then contracted left to right, two at a time:

    labels in both, still needed        batch axes of a matmul (or of the product)
    labels in both, not needed later    contracted: the matmul's inner axis
    labels in one only                  the matmul's rows (first operand) or columns (second)

A pair with nothing to contract is an elementwise product with broadcasting (outer products,
scaling) and a pair with no free labels is a product and a sum (dot products): both fuse with
their neighbours. Each operand's axes are arranged to need no transpose where one of matmul's
two layouts (plain or transposed) already fits. The gradient comes from the primitives'.
"""
from __future__ import annotations

import string

import numpy as np

from ..ir.types import ShapeError
from . import lax
from .lax import dtype_of, is_array, shape_of
from .lax_numpy import argument_error, as_array

_ELLIPSIS = "..."


def _ellipsis_label(i):
    return f"...{i:03d}"  # sorts before the letters, in axis order, as NumPy's output does


def _term(spec, text, what):
    """The letters of one term and where its '...' is (None if it has none)."""
    at = text.find(_ELLIPSIS)
    plain = text.replace(_ELLIPSIS, "", 1) if at >= 0 else text
    bad = [c for c in plain if c not in string.ascii_letters]
    if bad or _ELLIPSIS in plain or "." in plain:
        raise argument_error(ValueError, f"einsum: {what} {text!r} of {spec!r} may hold only "
                                         f"letters and one '...', got {bad or ['.']}")
    return plain, (None if at < 0 else at)


def _sublists(args):
    """einsum(op0, sublist0, op1, sublist1, ..., [out]) as a subscripts string and operands."""
    def letters(sub):
        out = []
        for s in sub:
            if s is Ellipsis:
                out.append(_ELLIPSIS)
            elif isinstance(s, (int, np.integer)) and 0 <= s < 52:
                out.append(string.ascii_letters[int(s)])
            else:
                raise argument_error(ValueError, f"einsum: sublist entries must be ints in [0, 52) "
                                                 f"or Ellipsis, got {s!r}")
        return "".join(out)

    operands, terms = list(args[0::2]), [letters(s) for s in args[1::2]]
    if len(args) % 2:  # an output sublist at the end
        return ",".join(terms) + "->" + letters(args[-1]), operands[:-1]
    return ",".join(terms), operands


def parse(spec, shapes):
    """(one label list per operand, the output labels, the size of each label)."""
    if not isinstance(spec, str):
        raise argument_error(TypeError, f"einsum: subscripts must be a string such as "
                                        f"'ij,jk->ik', got {type(spec).__name__}")
    spec = spec.replace(" ", "")
    lhs, arrow, out = spec.partition("->")
    if "->" in out or "-" in lhs or ">" in lhs:
        raise argument_error(ValueError, f"einsum: subscripts {spec!r} must have at most one '->'")
    terms = lhs.split(",")
    if len(terms) != len(shapes):
        raise argument_error(ValueError, f"einsum: subscripts {spec!r} name {len(terms)} "
                                         f"operand(s) but {len(shapes)} were given")
    parsed, n_ellipsis = [], 0
    for i, (text, shape) in enumerate(zip(terms, shapes)):
        letters, at = _term(spec, text, f"operand {i}'s subscripts")
        extra = len(shape) - len(letters)
        if extra < 0 or (extra and at is None):
            raise argument_error(ValueError, f"einsum: operand {i} has shape {shape} ({len(shape)} "
                                             f"axes) but its subscripts {text!r} name "
                                             f"{len(letters)}" + ("" if at is not None else
                                                                   "; add '...' to broadcast"))
        parsed.append((letters, at, extra))
        n_ellipsis = max(n_ellipsis, extra)
    labels = []
    for letters, at, extra in parsed:
        at = len(letters) if at is None else at
        ell = [_ellipsis_label(n_ellipsis - extra + t) for t in range(extra)]
        labels.append(list(letters[:at]) + ell + list(letters[at:]))
    ell_out = [_ellipsis_label(t) for t in range(n_ellipsis)]
    if arrow:
        letters, at = _term(spec, out, "the output")
        if n_ellipsis and at is None:
            raise argument_error(ValueError, f"einsum: the operands have '...' axes but the "
                                             f"output {out!r} of {spec!r} has no '...'")
        at = len(letters) if at is None else at
        output = list(letters[:at]) + ell_out + list(letters[at:])
        repeated = sorted({c for c in letters if letters.count(c) > 1})
        if repeated:
            raise argument_error(ValueError, f"einsum: output label {repeated[0]!r} appears more "
                                             f"than once in {spec!r}")
        known = {c for ls in labels for c in ls}
        missing = [c for c in letters if c not in known]
        if missing:
            raise argument_error(ValueError, f"einsum: output label {missing[0]!r} of {spec!r} "
                                             f"is in no operand")
    else:  # implicit: '...' first, then the letters used once, in alphabetical (ASCII) order
        counts = {}
        for ls in labels:
            for c in ls:
                counts[c] = counts.get(c, 0) + 1
        output = ell_out + sorted(c for c, k in counts.items() if k == 1 and len(c) == 1)
    sizes, origin = {}, {}  # a label's size (1 broadcasts) and the operand that set it
    for i, (ls, shape) in enumerate(zip(labels, shapes)):
        for c, d in zip(ls, shape):
            if sizes.get(c, 1) not in (1, d) and d != 1:
                name = "'...'" if len(c) > 1 else repr(c)
                raise argument_error(ShapeError, f"einsum: label {name} has size {sizes[c]} in "
                                                 f"operand {origin[c]} and {d} in operand {i} "
                                                 f"(shapes {', '.join(map(str, shapes))}); only "
                                                 f"size 1 broadcasts")
            if d != 1:
                sizes[c], origin[c] = d, i
            sizes.setdefault(c, 1)
    return labels, output, sizes


def _arrange(x, labels, order):
    """x transposed so that its axes follow `order` (a permutation of `labels`)."""
    return lax.transpose(x, [labels.index(c) for c in order])


def _diagonal(x, labels):
    """x with every repeated label reduced to its diagonal: the repeated axes moved last,
    flattened, and sliced with the stride that steps along the diagonal."""
    while True:
        repeated = next((c for c in labels if labels.count(c) > 1), None)
        if repeated is None:
            return x, labels
        shape = shape_of(x)
        where = [i for i, c in enumerate(labels) if c == repeated]
        sizes = {shape[i] for i in where}
        if len(sizes) > 1:
            raise argument_error(ShapeError, f"einsum: repeated label {repeated!r} names axes of "
                                             f"different sizes {sorted(sizes)} in one operand "
                                             f"(shape {shape})")
        n, k = sizes.pop(), len(where)
        rest = [i for i in range(len(labels)) if i not in where]
        x = lax.transpose(x, rest + where)
        kept = [shape[i] for i in rest]
        x = lax.reshape(x, tuple(kept) + (n ** k,))
        step = sum(n ** j for j in range(k))
        x = lax.slice_axes(x, [0] * (len(kept) + 1), [1] * len(kept) + [step],
                           kept + [n])
        labels = [labels[i] for i in rest] + [repeated]


def _contract(a, la, b, lb, keep, sizes):
    """The product of a and b summed over their shared labels that `keep` does not hold."""
    batch = [c for c in la if c in lb and c in keep]
    inner = [c for c in la if c in lb and c not in keep]
    rows = [c for c in la if c not in lb]
    cols = [c for c in lb if c not in la]
    dims = lambda cs: tuple(sizes[c] for c in cs)  # noqa: E731
    size = lambda cs: int(np.prod(dims(cs), dtype=np.int64))  # noqa: E731
    if not inner:  # an elementwise product, broadcasting: outer products, scaling
        a = lax.reshape(_arrange(a, la, batch + rows), dims(batch) + dims(rows) + (1,) * len(cols))
        b = lax.reshape(_arrange(b, lb, batch + cols), dims(batch) + (1,) * len(rows) + dims(cols))
        return lax.mul(a, b), batch + rows + cols
    if not rows and not cols:  # dot products per batch element: a product and a sum
        prod = lax.mul(_arrange(a, la, batch + inner), _arrange(b, lb, batch + inner))
        return lax.reduce_sum(prod, tuple(range(len(batch), len(batch) + len(inner)))), batch
    # a matmul: a as (batch, rows, inner) or (batch, inner, rows) (transposed), whichever is
    # a's own order; b as (batch, inner, cols) or (batch, cols, inner)
    flip_a = la == batch + inner + rows and la != batch + rows + inner
    flip_b = lb == batch + cols + inner and lb != batch + inner + cols
    a = _arrange(a, la, batch + (inner + rows if flip_a else rows + inner))
    b = _arrange(b, lb, batch + (cols + inner if flip_b else inner + cols))
    pa = (size(inner), size(rows)) if flip_a else (size(rows), size(inner))
    pb = (size(cols), size(inner)) if flip_b else (size(inner), size(cols))
    out = lax.matmul(lax.reshape(a, dims(batch) + pa), lax.reshape(b, dims(batch) + pb),
                     transpose_a=flip_a, transpose_b=flip_b)
    return lax.reshape(out, dims(batch) + dims(rows) + dims(cols)), batch + rows + cols


def einsum(subscripts, *operands, **kwargs):
    """Einstein summation, as np.einsum: 'ij,jk->ik' (explicit output), 'ij,jk' (implicit:
    labels used once, sorted), '...' broadcast axes, repeated labels ('ii->i' diagonals, 'ii'
    traces), any number of operands (contracted left to right), or the sublist form
    einsum(a, [0, 1], b, [1, 2], [0, 2]). Lowered to transposes, products, sums and batched
    matmuls; differentiable in every operand."""
    dtype = kwargs.pop("dtype", None)
    if kwargs:
        raise argument_error(TypeError, f"einsum: unexpected keyword argument(s) "
                                        f"{sorted(kwargs)}; only dtype= is supported")
    if not isinstance(subscripts, str):
        subscripts, operands = _sublists((subscripts,) + operands)
    if not operands:
        raise argument_error(ValueError, "einsum: needs at least one operand")
    operands = [as_array(x) for x in operands]
    bad = [dtype_of(x) for x in operands if dtype_of(x) == "bool"]
    if bad:
        raise argument_error(TypeError, "einsum: bool operands are not supported; cast them "
                                        "with .astype(...) first")
    operands = lax.promote(*operands)
    if dtype is not None:
        operands = [lax.cast(x, dtype) for x in operands]
    labels, output, sizes = parse(subscripts, [shape_of(x) for x in operands])
    terms = []
    for x, ls in zip(operands, labels):
        x, ls = _diagonal(x, ls)
        # a size-1 axis whose label is longer elsewhere broadcasts: drop it
        drop = [i for i, c in enumerate(ls) if shape_of(x)[i] == 1 and sizes[c] > 1]
        if drop:
            x = lax.reshape(x, tuple(d for i, d in enumerate(shape_of(x)) if i not in drop))
            ls = [c for i, c in enumerate(ls) if i not in drop]
        terms.append([x, ls])
    for i, (x, ls) in enumerate(terms):  # labels only this operand has and the output lacks
        elsewhere = set(output).union(*(t[1] for j, t in enumerate(terms) if j != i))
        alone = [k for k, c in enumerate(ls) if c not in elsewhere]
        if alone:
            terms[i] = [lax.reduce_sum(x, tuple(alone)), [c for c in ls if c in elsewhere]]
    x, ls = terms[0]
    for i in range(1, len(terms)):
        keep = set(output).union(*(t[1] for t in terms[i + 1:]))
        x, ls = _contract(x, ls, *terms[i], keep, sizes)
    if not is_array(x):
        x = np.asarray(x)
    return _arrange(x, ls, output)
