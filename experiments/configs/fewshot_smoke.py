"""Seconds-long smoke run of experiments/fewshot.py: ProtoNet (a 16-channel Conv4) on a small
glyph set, 1 x 5 episodes, 20 test episodes."""

from experiments.configs import fewshot


def get_config():
    c = fewshot.get_config()
    c.method = "protonet"
    c.datasets = ("glyphs_small",)
    c.image_size = 20
    c.width = 16
    c.shots = (1,)
    c.train_shot = 1
    c.episodes_per_epoch = 5
    c.epochs = 1
    c.val_episodes = 5
    c.test_episodes = 20
    c.test_query = 5
    c.val_query = 5
    return c
