"""A minute-scale smoke run of experiments/mixed_vocab.py (tiny budgets, two students)."""

from experiments.configs.mixed_vocab import get_config as base_config


def get_config():
    c = base_config()
    c.rows = ("full", "teacher_vocab")
    c.max_train_chunks = 200
    c.max_len = 32
    c.max_predictions = 8
    c.fidelity_sentences = 40
    c.eval_batch_size = 8
    c.eval_batches = 2
    c.student_vocab_size = 1000
    c.d_s = 32
    c.student_heads = 2
    c.student_intermediate = 64
    c.stage1_steps = 3
    c.stage1_batch_size = 4
    c.stage2_steps = 3
    c.stage2_batch_size = 8
    c.polarity_steps = 2
    c.polarity_seeds = (0,)
    c.ckpt_every = 2
    c.log_every = 1
    return c
