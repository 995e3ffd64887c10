"""Megatron's ``--data-path`` blends, parsed and checked before any index is built.

Megatron-LM accepts ``--data-path PREFIX`` or ``--data-path W1 PREFIX1 W2 PREFIX2 ...`` and hands
the result to ``BlendedMegatronDatasetBuilder``, which trips over bad input late and unhelpfully:
a missing ``.bin`` surfaces as an assertion deep in ``IndexedDataset`` and a half-weighted list is
silently read as all prefixes. The functions here catch both up front, with errors that name the
prefix and the fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class DataBlend:
    """Dataset prefixes and their (unnormalised) weights; ``weights`` is None when the user gave
    none, in which case Megatron weighs each prefix by its size."""

    prefixes: tuple[str, ...]
    weights: tuple[float, ...] | None

    def as_megatron(self) -> tuple[list[str], list[float] | None]:
        """The ``blend`` tuple of megatron-core's ``BlendedMegatronDatasetConfig``."""
        return list(self.prefixes), None if self.weights is None else list(self.weights)


def _as_weight(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def parse_data_path(data_path: str | Sequence[str]) -> DataBlend:
    """Parse Megatron's ``--data-path`` value: a list of tokens, or one whitespace-separated string.

    ``["a"]`` -> prefixes (a,), no weights; ``["0.7", "a", "0.3", "b"]`` -> (a, b), (0.7, 0.3).
    Either every prefix carries a weight or none does; weights must be positive and finite.
    """
    tokens = data_path.split() if isinstance(data_path, str) else [str(t) for t in data_path]
    tokens = [t.strip() for t in tokens if t.strip()]
    if not tokens:
        raise ValueError("--data-path is empty: pass one or more dataset prefixes (PREFIX.bin/.idx)")
    if _as_weight(tokens[0]) is None:
        numeric = [t for t in tokens if _as_weight(t) is not None]
        if numeric:
            raise ValueError(
                f"--data-path mixes weights ({', '.join(numeric)}) with unweighted prefixes: "
                "weight every prefix ('0.7 A 0.3 B') or none ('A B')"
            )
        return DataBlend(prefixes=tuple(tokens), weights=None)
    if len(tokens) % 2:
        raise ValueError(
            f"--data-path with weights needs WEIGHT PREFIX pairs, got an odd number of items ({len(tokens)}): "
            f"{' '.join(tokens)}"
        )
    prefixes, weights = [], []
    for weight_token, prefix in zip(tokens[::2], tokens[1::2]):
        weight = _as_weight(weight_token)
        if weight is None:
            raise ValueError(f"--data-path expected a weight before {prefix!r}, got {weight_token!r}")
        if _as_weight(prefix) is not None:
            raise ValueError(
                f"--data-path expected a prefix after weight {weight_token}, got another number {prefix!r}"
            )
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(
                f"--data-path weight for {prefix!r} must be positive and finite, got {weight_token}"
            )
        prefixes.append(prefix)
        weights.append(weight)
    return DataBlend(prefixes=tuple(prefixes), weights=tuple(weights))


def check_prefix_files(prefix: str) -> None:
    """Raise FileNotFoundError naming what is missing when ``prefix`` is not a complete indexed
    dataset, with a hint for the two common mistakes: passing the ``.bin``/``.idx`` path itself,
    and leaving off the ``_text_document`` suffix that preprocessing appends."""
    bin_path, idx_path = prefix + ".bin", prefix + ".idx"
    has_bin, has_idx = os.path.isfile(bin_path), os.path.isfile(idx_path)
    if has_bin and has_idx:
        return
    hint = ""
    stem, ext = os.path.splitext(prefix)
    if ext in (".bin", ".idx") and os.path.isfile(prefix):
        hint = f"; pass the prefix without {ext!r} (without the extension): {stem}"
    elif os.path.isfile(prefix + "_text_document.bin"):
        hint = (
            f"; preprocessing names its output <prefix>_text_document: did you mean {prefix}_text_document?"
        )
    if not has_bin and not has_idx:
        raise FileNotFoundError(
            f"--data-path prefix {prefix!r}: not found (neither {bin_path} nor {idx_path} exists){hint}"
        )
    missing = bin_path if not has_bin else idx_path
    raise FileNotFoundError(
        f"--data-path prefix {prefix!r}: {missing} is missing (not found; its pair exists){hint}"
    )


def check_split(split: str) -> tuple[float, float, float]:
    """Validate Megatron's ``--split`` ("969,30,1", also "969/30/1"; missing parts are 0) and
    return its three weights. megatron-core's own parser keeps only digits and dots, so "1,-1,0"
    would silently become 1,1,0 and "0,0,0" would fail later with a NaN."""
    parts = [p.strip() for p in str(split).replace("/", ",").split(",")]
    weights = []
    for part in parts:
        weight = _as_weight(part)
        if weight is None or not math.isfinite(weight) or weight < 0:
            raise ValueError(
                f"--split {split!r}: {part!r} is not a non-negative weight (expected e.g. 969,30,1)"
            )
        weights.append(weight)
    if len(weights) > 3:
        raise ValueError(f"--split {split!r} has {len(weights)} parts; it takes train,valid,test")
    weights += [0.0] * (3 - len(weights))
    if sum(weights) <= 0:
        raise ValueError(f"--split {split!r} gives every split weight 0")
    return weights[0], weights[1], weights[2]
