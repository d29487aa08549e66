"""The default classifiers' head: several MLPs from different seeds, stored as one."""

from __future__ import annotations

import numpy as np
import pytest

from warmline.safety.classifier import _side_by_side, forward


@pytest.mark.parametrize("classes", [2, 4])
def test_heads_side_by_side_give_the_mean_of_their_logits(classes: int) -> None:
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 6))
    labels = rng.integers(0, classes, size=120)
    heads = [
        MLPClassifier(hidden_layer_sizes=(5,), max_iter=50, random_state=seed).fit(features, labels)
        for seed in range(3)
    ]

    def logits(head: MLPClassifier) -> np.ndarray:
        return forward(
            [(coef.T, bias) for coef, bias in zip(head.coefs_, head.intercepts_, strict=True)], features
        )

    combined = forward(_side_by_side(heads), features)
    np.testing.assert_allclose(
        combined, np.mean([logits(head) for head in heads], axis=0), rtol=1e-6, atol=1e-9
    )
    # The heads differ (else the test could not tell an average from any one of them).
    assert not np.allclose(logits(heads[0]), logits(heads[1]))
