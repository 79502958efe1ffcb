"""How many examples of each slice go into the mixture: the written meaning of Mixture weights.

The same words are in the training.yaml JSON Schema and the README:

- Weights are shares of the final mixture, from 0 to 1. Slices not listed share what is left
  (1 minus the listed weights, never below 0) in proportion to their size. With no ``Mixture``
  section the mixture is the plain union of all slices.
- The total number of examples defaults to the number available across all slices; set it with
  ``MixtureTotal:`` in training.yaml or ``oig mix --total N``.
- A slice whose share is larger than the slice is repeated, every example used before any is used
  again; a smaller share samples without replacement (``oig.data.mixwriter``). A fixed seed makes the
  mixture byte-identical on a rerun (same inputs, same Python).
- Example: slices a (100 examples), b (10) and c (40) with ``Mixture: {a: 0.5}`` give a 75, b 15,
  c 60 (total 150: a gets half; b and c share the other half 10:40).
- Listed weights adding up to more than 1: a warning, and they are scaled to add up to 1; slices not
  listed get nothing. Listed weights adding up to less than 1 when no unlisted slice has examples
  to take the rest: a warning, and they are scaled up to add up to 1.
- A weight for a slice that does not exist is an error naming the nearest slice; a slice left with
  no share (or with a share too small to round to one example) is a warning.
- The slice sizes are what is left for training: the examples held out for evaluation
  (``oig.data.split``) are taken out of each slice first, and weights never repeat them.
- Counts add up to the total exactly: each slice gets the whole part of share x total, and the
  examples left over go one each to the largest fractional parts, ties to the name that sorts first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from oig.data.messages import nearest
from oig.data.schemas import MAX_MIXTURE_TOTAL, MIXTURE_TOTAL_FACTOR
from oig.errors import InvalidInput, Problem

WHERE = "training.yaml"  # the file a Mixture problem points at when no config path is known


@dataclass(frozen=True)
class SliceShare:
    name: str
    available: int
    weight: float | None  # as configured; None when the slice is not listed in Mixture
    share: float  # of the final mixture, 0 to 1
    count: int
    held_out: int = 0  # distinct examples held out for evaluation, not part of available

    @property
    def epochs(self) -> float:
        """How many times the slice is used: above 1 means repeated, below 1 means sampled."""
        return self.count / self.available if self.available else 0.0


@dataclass(frozen=True)
class Allocation:
    total: int
    slices: list[SliceShare]  # sorted by name
    warnings: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {s.name: s.count for s in self.slices}

    @property
    def shares(self) -> dict[str, float]:
        return {s.name: s.share for s in self.slices}


def _exact(weight: float) -> Fraction:
    # repr() is the shortest decimal that round-trips, i.e. what the user wrote: 0.3 -> 3/10, so
    # 0.7 + 0.3 is exactly 1 and the arithmetic below has no float drift.
    return Fraction(repr(float(weight)))


def _problem(message: str, where: str) -> Problem:
    return Problem(where, 0, 0, "error", message)


def allocate(
    available: dict[str, int], weights: dict[str, float] | None, total: int | None, where: str = WHERE,
    held_out: dict[str, int] | None = None,
) -> Allocation:
    """Counts per slice from slice sizes, Mixture weights and a total (see the module docstring).

    ``available``: each slice's examples for training; ``held_out``: those it holds out (shown only).
    Pure: no files. Raises InvalidInput (pointing at ``where``) for weights of unknown slices,
    weights that are not numbers >= 0, a bad total, or a mixture that cannot be made.
    """
    names = sorted(available)
    if not names:
        raise InvalidInput([_problem("there are no slices to mix: add data/<name>.yaml files", "data")])
    problems: list[Problem] = []
    for name, weight in (weights or {}).items():
        if name not in available:
            near = nearest(name, names)
            hint = f"; did you mean '{near}'?" if near else f" (slices: {', '.join(names)})"
            problems.append(_problem(f"Mixture names slice '{name}', which does not exist{hint}", where))
        elif isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < float("inf"):
            problems.append(_problem(f"the weight of slice '{name}' must be a number >= 0, not {weight!r}", where))
        elif weight > 0 and available[name] == 0:
            problems.append(_problem(f"slice '{name}' has weight {weight:g} but no examples", where))
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        problems.append(_problem(f"the mixture total must be a whole number >= 1, not {total!r}", where))
    if problems:
        raise InvalidInput(problems)

    size = sum(available.values())
    total = size if total is None else total
    warnings: list[str] = []
    if size == 0:
        if total:
            raise InvalidInput([_problem(f"no slice has any examples, so a total of {total} cannot be drawn", where)])
        return Allocation(0, [SliceShare(n, 0, _weight(weights, n), 0.0, 0) for n in names],
                          ["no slice has any examples: the mixture is empty"])
    # Bounded: a training.yaml (a pull request's, say) must not make the runner train for days.
    cap = min(MIXTURE_TOTAL_FACTOR * size, MAX_MIXTURE_TOTAL)
    if total > cap:
        raise InvalidInput([_problem(f"a mixture total of {total:,} is more than {MIXTURE_TOTAL_FACTOR}x the {size:,} "
                                     f"examples available (at most {cap:,}; never above {MAX_MIXTURE_TOTAL:,}): "
                                     "lower MixtureTotal or add data", where)])

    # --- shares, exact ---------------------------------------------------------------------------
    shares: dict[str, Fraction]
    if weights is None:
        shares = {n: Fraction(available[n], size) for n in names}
    else:
        listed = {n: _exact(w) for n, w in weights.items()}
        listed_sum = sum(listed.values(), Fraction(0))
        rest = [n for n in names if n not in listed]
        rest_size = sum(available[n] for n in rest)
        if listed_sum > 1:
            warnings.append(f"Mixture weights add up to {float(listed_sum):g}, more than 1: they are scaled to "
                            "add up to 1 and slices not listed get nothing")
            shares = {n: listed.get(n, Fraction(0)) / listed_sum for n in names}
        elif listed_sum < 1 and rest_size == 0:
            if listed_sum == 0:
                raise InvalidInput([_problem("every Mixture weight is 0 and no other slice has examples: "
                                             "there is nothing to mix", where)])
            warnings.append(f"Mixture weights add up to {float(listed_sum):g} and no slice outside Mixture has "
                            "examples to take the rest: they are scaled to add up to 1")
            shares = {n: listed.get(n, Fraction(0)) / listed_sum for n in names}
        else:
            left = 1 - listed_sum  # rest_size is 0 here only when left is 0 too
            shares = {n: listed[n] if n in listed else left * Fraction(available[n], rest_size or 1) for n in names}

    # --- counts: largest remainder, ties to the name that sorts first -----------------------------
    quotas = {n: shares[n] * total for n in names}
    counts = {n: int(q) for n, q in quotas.items()}  # int() of a Fraction >= 0 is its floor
    leftover = total - sum(counts.values())
    for n in sorted(names, key=lambda n: (-(quotas[n] - counts[n]), n))[:leftover]:
        counts[n] += 1

    for n in names:
        if available[n] and shares[n] == 0:
            why = " (its weight is 0)" if weights and n in weights else \
                  " (the listed weights already take the whole mixture)"
            warnings.append(f"slice '{n}' gets no share of the mixture{why}")
        elif available[n] and counts[n] == 0:
            warnings.append(f"slice '{n}' has a share of {float(shares[n]):.4%}, which is no example of "
                            f"{total}: raise its weight or the total")
        elif not available[n]:
            warnings.append(f"slice '{n}' has no examples")
    held = held_out or {}
    rows = [SliceShare(n, available[n], _weight(weights, n), float(shares[n]), counts[n], held.get(n, 0))
            for n in names]
    return Allocation(total, rows, warnings)


def _weight(weights: dict[str, float] | None, name: str) -> float | None:
    return float(weights[name]) if weights and name in weights else None

