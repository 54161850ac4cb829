"""The running accuracy tally of a load test (the response schema is catsdogs.contract.check_prediction)."""
from __future__ import annotations

from dataclasses import dataclass, field


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
