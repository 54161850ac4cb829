"""What a correct answer from /predictions/catsdogs looks like, and the running accuracy tally."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

RESPONSE_KEYS = {"label", "confidence", "probabilities", "model_version"}


def check_prediction(body, classes: tuple[str, ...] | list[str] | None = None,
                     version: str | None = None) -> str | None:
    """None when `body` (parsed JSON) is a well-formed prediction, else what is wrong with it.

    Well formed: exactly the keys {label, confidence, probabilities, model_version}; probabilities maps
    each class (in `classes` order when given) to a number in [0, 1] summing to 1; label is the most
    probable class and confidence its probability; model_version is `version` when one is expected.
    """
    if not isinstance(body, dict):
        return f"response is {type(body).__name__}, not a JSON object"
    if set(body) != RESPONSE_KEYS:
        return f"keys {sorted(body)} != {sorted(RESPONSE_KEYS)}"
    probs = body["probabilities"]
    if not isinstance(probs, dict) or not probs:
        return "probabilities is not a non-empty object"
    if classes is not None and list(probs) != list(classes):
        return f"probability classes {list(probs)} != {list(classes)}"
    values = list(probs.values())
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
        return f"probabilities {probs} are not numbers in [0, 1]"
    if not math.isclose(sum(values), 1.0, abs_tol=1e-3):
        return f"probabilities sum to {sum(values):.4f}, not 1"
    if body["label"] not in probs:
        return f"label {body['label']!r} is not one of {list(probs)}"
    if not isinstance(body["confidence"], (int, float)) or not math.isclose(body["confidence"], probs[body["label"]],
                                                                           abs_tol=1e-6):
        return f"confidence {body['confidence']} != probability of {body['label']!r} {probs[body['label']]}"
    if probs[body["label"]] < max(values) - 1e-6:
        return f"label {body['label']!r} is not the most probable class ({probs})"
    if not isinstance(body["model_version"], str) or not body["model_version"]:
        return "model_version is empty"
    if version is not None and body["model_version"] != version:
        return f"model_version {body['model_version']!r} != requested {version!r}"
    return None


@dataclass
class Tally:
    """Answers to images whose path carries the label: how many, how many right, per true label."""

    labelled: int = 0
    correct: int = 0
    unlabelled: int = 0
    per_label: dict = field(default_factory=dict)   # true label -> [right, total]
    versions: dict = field(default_factory=dict)    # model_version -> answers

    def add(self, truth: str | None, predicted: str, version: str) -> None:
        self.versions[version] = self.versions.get(version, 0) + 1
        if truth is None:
            self.unlabelled += 1
            return
        self.labelled += 1
        right = truth == predicted
        self.correct += right
        counts = self.per_label.setdefault(truth, [0, 0])
        counts[0] += right
        counts[1] += 1

    @property
    def accuracy(self) -> float | None:
        return round(self.correct / self.labelled, 4) if self.labelled else None

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "labelled": self.labelled, "correct": self.correct,
                "unlabelled": self.unlabelled,
                "per_label": {k: {"correct": v[0], "total": v[1]} for k, v in sorted(self.per_label.items())},
                "versions": dict(self.versions)}
