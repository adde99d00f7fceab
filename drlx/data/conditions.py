"""Conditions of the examples: their class, or binary attributes derived from what the data carry
(docs/method.md §12). A condition is an integer vector per example, one entry ("slot") per
class or attribute; slot m takes values 0 .. n_m - 1, and n_m itself is its null token (the
unconditional model's input).

Attributes of the embedded data:
- digits, from the class: `even` (0 2 4 6 8), `at_least_5` (5-9), `has_loop` (0 6 8 9: a closed
  loop as the 8x8 digits draw them; their 4s are open);
- 2D toys, from the point: `right_half` (x > 0), `upper_half` (y > 0).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

DIGIT_ATTRIBUTES: dict[str, frozenset[int]] = {
    "even": frozenset({0, 2, 4, 6, 8}),
    "at_least_5": frozenset({5, 6, 7, 8, 9}),
    "has_loop": frozenset({0, 6, 8, 9}),
}
TOY_ATTRIBUTES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "right_half": lambda x: x[:, 0] > 0,
    "upper_half": lambda x: x[:, 1] > 0,
}
# which attributes each data kind can derive
ATTRIBUTES_OF_KIND = {"digits": tuple(DIGIT_ATTRIBUTES), "toy2d": tuple(TOY_ATTRIBUTES)}


def classes_with(attributes: dict[str, int], num_classes: int = 10) -> list[int]:
    """The digit classes whose attributes have the given values ({"even": 1, ...})."""
    return [
        c
        for c in range(num_classes)
        if all((c in DIGIT_ATTRIBUTES[name]) == bool(v) for name, v in attributes.items())
    ]


@dataclass(frozen=True)
class Conditioning:
    """What a conditional model is conditioned on.

    Attributes:
        on: "class" or "attributes".
        names: the slots' names (("class",) or the attributes, in order).
        cardinalities: n_m of every slot (the number of classes; 2 for an attribute).
        p_uncond: probability that training replaces a slot by its null token.
        data_kind: the data source's kind (where attributes come from).
        embedding_init_std: std of the networks' condition tables at initialisation (0: zero).
    """

    on: str
    names: tuple[str, ...]
    cardinalities: tuple[int, ...]
    p_uncond: float
    data_kind: str
    embedding_init_std: float = 0.0

    @property
    def null(self) -> np.ndarray:
        """The null condition: every slot at its null token."""
        return np.asarray(self.cardinalities, np.int32)

    def arrays_needed(self, split: str) -> tuple[str, ...]:
        """The arrays of a prepared data file that `values(arrays, split)` reads."""
        if self.on == "class" or self.data_kind == "digits":
            return (f"{split}_labels",)
        return (split,)

    def values(self, arrays: dict[str, np.ndarray], split: str) -> np.ndarray:
        """The condition (N, M) int32 of every example of a split, from the split's labels
        (`<split>_labels`) or, for the toys' attributes, its points."""
        if self.on == "class" or self.data_kind == "digits":
            key = f"{split}_labels"
            if key not in arrays:
                raise KeyError(f"the data hold no {key!r}: this dataset is not labelled")
            labels = np.asarray(arrays[key], np.int64)
            if self.on == "class":
                if labels.min() < 0 or labels.max() >= self.cardinalities[0]:
                    raise ValueError(
                        f"{key}: labels in [{labels.min()}, {labels.max()}], expected 0 .. "
                        f"{self.cardinalities[0] - 1}"
                    )
                return labels[:, None].astype(np.int32)
            columns = [np.isin(labels, sorted(DIGIT_ATTRIBUTES[n])) for n in self.names]
        else:
            points = np.asarray(arrays[split])
            columns = [TOY_ATTRIBUTES[n](points) for n in self.names]
        return np.stack(columns, axis=1).astype(np.int32)

    def parse(self, text: dict[str, int]) -> np.ndarray:
        """A condition vector from {slot name: value}; slots not named are null."""
        out = self.null.copy()
        for name, value in text.items():
            if name not in self.names:
                raise KeyError(f"no slot {name!r}; the condition has {list(self.names)}")
            m = self.names.index(name)
            if not 0 <= value < self.cardinalities[m]:
                raise ValueError(f"{name} = {value}: expected 0 .. {self.cardinalities[m] - 1}")
            out[m] = value
        return out
