"""The scikit-learn wrapper trains through the engine and works inside GridSearchCV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from digitlab.errors import ConfigError
from digitlab.estimator import DigitClassifier


def test_fit_predict_score_on_real_digits(mnist):
    X, y = mnist.train_images[:3000].numpy(), mnist.train_labels[:3000].numpy()
    clf = DigitClassifier(model="mlp-basic-128", epochs=3, batch_size=64).fit(X, y)
    Xt, yt = mnist.test_images[:1000].numpy(), mnist.test_labels[:1000].numpy()
    proba = clf.predict_proba(Xt)
    assert proba.shape == (1000, 10) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert clf.score(Xt, yt) > 0.85  # 3 epochs on 3k digits; chance is 0.1
    # float input in [0, 1] and flat 784 layout give the same predictions
    assert (clf.predict(Xt.reshape(-1, 784) / 255.0) == clf.predict(Xt)).all()


def test_grid_search_selects_by_cross_validation(mnist):
    X, y = mnist.train_images[:1200].numpy(), mnist.train_labels[:1200].numpy()
    grid = GridSearchCV(DigitClassifier(model="mlp-basic-128", epochs=2, batch_size=100),
                        {"lr": [1e-6, 3e-3]}, cv=2)
    grid.fit(X, y)
    assert grid.best_params_ == {"lr": 3e-3}  # a 1e-6 learning rate barely moves the weights
    assert clone(grid.best_estimator_).get_params()["lr"] == 3e-3


def test_bad_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="shape"):
        DigitClassifier().fit(np.zeros((4, 10)), [0, 1, 2, 3])
    with pytest.raises(ConfigError, match="samples"):
        DigitClassifier().fit(np.zeros((4, 28, 28), np.uint8), [0, 1])
