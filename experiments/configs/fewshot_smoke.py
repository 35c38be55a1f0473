"""Seconds-long smoke run of experiments/fewshot.py: ProtoNet and Baseline on a small glyph set,
2 x 5 episodes, 20 test episodes."""

from experiments.configs import fewshot


def get_config():
    c = fewshot.get_config()
    c.method = "protonet,baseline"
    c.datasets = ("glyphs_small",)
    c.image_size = 20
    c.episodes_per_epoch = 5
    c.epochs = 2
    c.batch_size = 32
    c.val_episodes = 5
    c.test_episodes = 20
    c.test_query = 5
    c.val_query = 5
    return c
