"""The related-list combiner is data: a linear score over the signals
(``recommender.rank.signals``), and a logistic map from the absolute
similarities to a confidence. Both are a few numbers in a JSON file
(``ranker.json`` beside this module), copied into every index version at
build time, so a version always ranks with the model it was built with.
``recommender.training`` fits them (``scripts/train_ranker.py``).

A leaf: it imports nothing of the project. Whoever loads a model for use
passes the names of the signals it can compute (``SIGNALS``)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

DEFAULT_MODEL = Path(__file__).with_name("ranker.json")


@dataclass(frozen=True)
class Ranker:
    names: tuple[str, ...]
    """Signals, in the order of ``weights`` (see ``signals.SIGNALS``)."""
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    calibration_x: np.ndarray
    """Unused by a logistic calibration; kept in the file for older models."""
    calibration_y: np.ndarray
    info: dict = field(default_factory=dict)
    """How it was trained: sets, rows, date."""

    def score(self, features: np.ndarray) -> np.ndarray:
        """The ranking score: the log-odds that a candidate is related."""
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each signal's part of the score (rows x signals): what a reason shows."""
        return ((features - self.mean) / self.scale) * self.weights

    calibration_names: tuple[str, ...] = ()
    """Inputs of the confidence: signals of ``names`` (or "score"). Platt
    scaling over the absolute similarities: a list's rank says which
    candidate is best, these say whether the best is any good."""
    calibration_weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calibration_bias: float = 0.0

    def confidence(self, score: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
        """The calibrated chance that a reader calls the item related, in [0, 1]."""
        score = np.asarray(score, dtype=np.float64)
        if not self.calibration_names:
            return np.clip(np.interp(score, self.calibration_x, self.calibration_y), 0.0, 1.0)
        z = np.full(score.shape, self.calibration_bias, dtype=np.float64)
        for name, weight in zip(self.calibration_names, self.calibration_weights):
            if name == "score":
                column = score
            else:
                assert features is not None, f"the calibration reads {name}: pass the features"
                column = features[:, self.names.index(name)]
            z = z + weight * column
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def to_dict(self) -> dict:
        return {
            "kind": "logistic-regression+isotonic",
            "names": list(self.names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "calibration": {"x": self.calibration_x.tolist(), "y": self.calibration_y.tolist(),
                            "names": list(self.calibration_names), "weights": self.calibration_weights.tolist(),
                            "bias": self.calibration_bias},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict, signals: Collection[str]) -> Ranker:
        """A model from its JSON; ``signals``: the names the caller can compute
        (a model naming another is refused: ValueError)."""
        def array(values) -> np.ndarray:
            return np.asarray(values, dtype=np.float64)

        names = tuple(data["names"])
        calibration = data["calibration"]
        ranker = cls(
            names, array(data["mean"]), array(data["scale"]), array(data["weights"]), float(data["bias"]),
            array(calibration["x"]), array(calibration["y"]), dict(data.get("info", {})),
            tuple(calibration.get("names", ())), array(calibration.get("weights", [])),
            float(calibration.get("bias", 0.0)),
        )
        if any(n != "score" and n not in names for n in ranker.calibration_names) or len(
            ranker.calibration_names) != len(ranker.calibration_weights):
            raise ValueError("ranker model's calibration names unknown signals")
        unknown = [n for n in names if n not in signals]
        if unknown or not (len(names) == len(ranker.mean) == len(ranker.scale) == len(ranker.weights)):
            raise ValueError(f"ranker model is inconsistent (unknown signals: {unknown})")
        if len(ranker.calibration_x) < 2 or len(ranker.calibration_x) != len(ranker.calibration_y):
            raise ValueError("ranker model has no usable calibration")
        return ranker

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, signals: Collection[str]) -> Ranker:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")), signals)

    def without(self, name: str) -> Ranker:
        """This model with one signal's weight set to 0 (an ablation)."""
        weights = self.weights.copy()
        weights[self.names.index(name)] = 0.0
        return replace(self, weights=weights, info={**self.info, "without": name})
