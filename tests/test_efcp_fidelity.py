"""The statistics and the data split of experiments/efcp_fidelity.py."""

import numpy as np
import pytest

from experiments import efcp_fidelity as ef
from experiments.configs.efcp_fidelity_smoke import get_config


def test_paired_differences_student_t_interval():
    out = ef.paired([0.01, 0.02, 0.03])  # accuracy fractions -> points: 1, 2, 3
    assert out["n"] == 3
    np.testing.assert_allclose(out["mean"], 2.0)
    np.testing.assert_allclose(out["std"], 1.0)
    half = 4.302652729911275 / np.sqrt(3)  # t_{0.975, 2} = 4.3027
    np.testing.assert_allclose(out["ci95"], [2.0 - half, 2.0 + half], rtol=1e-9)


def test_grid_has_no_damping_for_adam():
    cfg = get_config()
    cfg.mfac_lr_grid, cfg.damping_grid, cfg.adam_lr_grid = (1e-3, 1e-2), (1e-4, 1e-2), (3e-4,)
    assert ef.grid(cfg, "adam") == [(3e-4, 0.0)]
    assert ef.grid(cfg, "mfac_topk") == [(1e-3, 1e-4), (1e-3, 1e-2), (1e-2, 1e-4), (1e-2, 1e-2)]


def test_split_is_disjoint_fixed_and_checked():
    pytest.importorskip("jaxcomp.data.idx")
    from jaxcomp.data.idx import fashion_mnist_dir

    if not fashion_mnist_dir().exists():
        pytest.skip("dataset-fashion-mnist not installed")
    cfg = get_config()
    (xt, yt), (xv, yv), (xs, ys) = ef.split_data(cfg)
    assert len(yt) == cfg.train_limit and len(yv) == cfg.val_size and len(ys) == cfg.test_limit
    # No validation image is a training image (compare raw bytes of all 60000 - val images).
    cfg.train_limit = 0
    (xt, _), (xv2, _), _ = ef.split_data(cfg)
    assert len(xt) + len(xv2) == 60000
    np.testing.assert_array_equal(xv, xv2)  # the same validation split whatever the limits
    train_rows = {x.tobytes() for x in xt}
    assert sum(x.tobytes() in train_rows for x in xv) <= 5  # Fashion-MNIST has a few duplicates
    cfg.val_size = 60000
    with pytest.raises(ValueError, match="val_size"):
        ef.split_data(cfg)
