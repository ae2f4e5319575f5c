"""The combiner is data: a logistic regression over the signals, and an
isotonic map from its score to a confidence. Both are a few numbers in a
JSON file (``related.json`` beside this module), copied into every index
version at build time, so a version always ranks with the model it was built
with. ``scripts/train_ranker.py`` fits them on the development sets."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_MODEL = Path(__file__).with_name("related.json")
FILE_NAME = "ranker.json"


@dataclass(frozen=True)
class Ranker:
    names: tuple[str, ...]
    """Signals, in the order of ``weights`` (see ``signals.SIGNALS``)."""
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    calibration_x: np.ndarray
    """Scores at which the isotonic confidence map is given (increasing) ..."""
    calibration_y: np.ndarray
    """... and the share of such items that were related (non-decreasing)."""
    info: dict = field(default_factory=dict)
    """How it was trained: sets, rows, date."""

    def score(self, features: np.ndarray) -> np.ndarray:
        """The ranking score: the log-odds that a candidate is related."""
        return ((features - self.mean) / self.scale) @ self.weights + self.bias

    def contributions(self, features: np.ndarray) -> np.ndarray:
        """Each signal's part of the score (rows x signals): what a reason shows."""
        return ((features - self.mean) / self.scale) * self.weights

    def confidence(self, score: np.ndarray) -> np.ndarray:
        """The calibrated chance that a reader calls the item related, in [0, 1]."""
        return np.clip(np.interp(score, self.calibration_x, self.calibration_y), 0.0, 1.0)

    def to_dict(self) -> dict:
        return {
            "kind": "logistic-regression+isotonic",
            "names": list(self.names),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "calibration": {"x": self.calibration_x.tolist(), "y": self.calibration_y.tolist()},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Ranker:
        def array(values) -> np.ndarray:
            return np.asarray(values, dtype=np.float64)

        names = tuple(data["names"])
        ranker = cls(
            names, array(data["mean"]), array(data["scale"]), array(data["weights"]), float(data["bias"]),
            array(data["calibration"]["x"]), array(data["calibration"]["y"]), dict(data.get("info", {})),
        )
        from recommender.rank.signals import SIGNALS

        unknown = [n for n in names if n not in SIGNALS]
        if unknown or not (len(names) == len(ranker.mean) == len(ranker.scale) == len(ranker.weights)):
            raise ValueError(f"ranker model is inconsistent (unknown signals: {unknown})")
        if len(ranker.calibration_x) < 2 or len(ranker.calibration_x) != len(ranker.calibration_y):
            raise ValueError("ranker model has no usable calibration")
        return ranker

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path = DEFAULT_MODEL) -> Ranker:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def without(self, name: str) -> Ranker:
        """This model with one signal's weight set to 0 (an ablation)."""
        weights = self.weights.copy()
        weights[self.names.index(name)] = 0.0
        return Ranker(self.names, self.mean, self.scale, weights, self.bias, self.calibration_x,
                      self.calibration_y, {**self.info, "without": name})
