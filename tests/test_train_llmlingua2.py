"""The teacher's labels: word surprisal sums and percentile keep labels."""

import numpy as np

from compressors.training.surprisal import word_sums
from compressors.training.train_llmlingua2 import word_labels


def test_word_sums_assign_tokens_by_their_last_character():
    text = "Hello wonderful world."
    spans = np.array([[0, 5], [6, 15], [16, 21], [21, 22]])
    # decoder tokens: "Hello", " wonder", "ful", " world", ".", and a lone space
    offsets = np.array([[0, 5], [5, 12], [12, 15], [15, 21], [21, 22], [5, 6]])
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0])
    assert word_sums(text, offsets, values, spans).tolist() == [1.0, 5.0, 4.0, 5.0]


def test_labels_are_percentiles_with_ties_shared_and_digits_raised():
    surprisal = np.array([0.5, 3.0, 1.0, 1.0, 7.0])
    digit = np.array([True, False, False, False, False])
    labels = word_labels(surprisal, digit, digit_floor=0.9)
    np.testing.assert_allclose(labels, [0.9, 0.75, 0.375, 0.375, 1.0], rtol=1e-6)
    assert word_labels(np.array([2.0]), np.array([False]), 0.9).tolist() == [1.0]
