"""Deterministic, stratified split."""
import hashlib
from collections import Counter

from training.prepare import data_hash, stratified_split


def records(n_cat, n_dog):
    return [{"label": label, "sha256": hashlib.sha256(f"{label}{i}".encode()).hexdigest()}
            for label, n in (("cat", n_cat), ("dog", n_dog)) for i in range(n)]


def test_same_seed_same_split_regardless_of_listing_order():
    recs = records(50, 30)
    first = dict(zip((r["sha256"] for r in recs), stratified_split(recs, 0.1, 0.2, seed=3)))
    reordered = list(reversed(recs))
    second = dict(zip((r["sha256"] for r in reordered), stratified_split(reordered, 0.1, 0.2, seed=3)))
    assert first == second


def test_other_seed_other_split():
    recs = records(50, 30)
    assert stratified_split(recs, 0.1, 0.2, seed=1) != stratified_split(recs, 0.1, 0.2, seed=2)


def test_ratios_hold_per_class():
    recs = records(100, 40)
    counts = Counter((r["label"], s) for r, s in zip(recs, stratified_split(recs, 0.1, 0.2, seed=0)))
    assert counts[("cat", "test")] == 20 and counts[("cat", "val")] == 10 and counts[("cat", "train")] == 70
    assert counts[("dog", "test")] == 8 and counts[("dog", "val")] == 4 and counts[("dog", "train")] == 28


def test_data_hash_changes_with_labels():
    recs = records(3, 3)
    for r, s in zip(recs, stratified_split(recs, 0.2, 0.2, 0)):
        r["split"] = s
    before = data_hash(recs)
    recs[0]["label"] = "dog"
    assert data_hash(recs) != before
