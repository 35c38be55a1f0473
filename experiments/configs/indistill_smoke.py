"""Under-a-minute smoke run of experiments/indistill.py: teacher, auxiliary CE and PKT, pruning
and two students (PKT-only, InDistill's full curriculum) for a handful of steps each, with a small
CNN as teacher; retrieval on a 2000-image database and 500 queries, one seed."""

from experiments.configs.indistill import get_config as base_config


def get_config():
    c = base_config()
    c.seeds = (0,)
    c.teacher_model = "cnn32"  # the ResNet-20's compile alone would take most of a minute
    c.students = ("student_pkt", "indistill")
    c.metrics = ("euclidean",)
    c.train_images = 2000
    c.batch_size = 32
    c.teacher_epoch_images = 32
    c.teacher_epochs = (2, 1)
    c.epoch_images = 32
    c.aux_ce_epochs = (2, 1)
    c.aux_pkt_epochs = 2
    c.block_epochs = (1, 1, 1)
    c.final_epoch = 5
    c.finetune_epochs = 1
    c.eval_database = 2000
    c.eval_queries = 500
    c.ckpt_every = 4
    c.scale_note = "smoke test: a few steps per stage, 2000 x 500 retrieval"
    return c
