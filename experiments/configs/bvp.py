"""Config for experiments/bvp.py: Galerkin vs compact FD4 vs Galerkin + residual correction."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.force_resume = False  # resume even under a config that differs from the checkpoint's
    # Names from jaxcomp.numerics.examples.classic_problems().
    config.problems = ("dirichlet_linear", "robin_linear", "bratu", "cubic", "robin_nonlinear")
    config.degrees = (3, 4, 6, 8, 10)  # Bernstein degrees for the Galerkin method
    config.grid_sizes = (8, 16, 32, 64, 128)  # compact FD4 intervals (alone and for the correction)
    config.eval_points = 1001  # fine grid on which the Galerkin error is measured
    # PNG file name inside the workdir ("" = no plot). Figures in docs/ are copied there by hand.
    config.png = "bvp_error_vs_n.png"
    return config
