"""InDistill on Fashion-MNIST, scaled to a shared 2-core CPU (see docs/indistill.md).

The reference (CIFAR-10, one GPU) trains teacher and auxiliary baselines for 50 + 30 epochs (Adam
1e-3 then 1e-4), the auxiliary by PKT for 50 epochs and the students for 60 + 10 epochs with the
curriculum 3 / 4 / 5 / 48 / 10. Here an "epoch" is ``epoch_images`` images (the full set is 60000):
every stage keeps its structure, order and relative length; only the epoch unit shrinks. Retrieval
is always exact on the full 60k database and 10k queries.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data_dir = ""  # default: /usr/share/datasets/fashion-mnist or $JAXCOMP_FASHION_MNIST_DIR
    c.num_classes = 10
    c.train_images = 0  # 0 = all 60000 training images are sampled from
    c.batch_size = 128
    c.learning_rate = 1e-3  # Adam, as the reference
    c.reset_opt_state = False  # the reference re-creates Adam every epoch; we keep one optimizer
    c.pkt_kernel = "combined"  # the reference's cosine + distance kernels, Jeffreys divergence
    c.seeds = (0, 1, 2)
    c.teacher_seed = 0
    # teacher (ResNet-20): reference 50 + 30 epochs
    c.teacher_model = "resnet20"
    c.teacher_epoch_images = 1280
    c.teacher_epochs = (5, 3)
    # the epoch unit of the small networks
    c.epoch_images = 1280
    c.aux_ce_epochs = (50, 30)  # reference 50 + 30
    c.aux_pkt_epochs = 20  # reference 50 (shortened: every step runs the ResNet-20 teacher)
    c.block_epochs = (3, 4, 5)  # reference curriculum: blocks 1, 2, 3 ...
    c.final_epoch = 60  # ... then PKT on fc1 until epoch 60 ...
    c.finetune_epochs = 10  # ... and 10 more at lr / 10
    c.student_widths = (8, 16, 32)
    c.students = (
        "student_ce",
        "student_pkt",
        "indistill",
        "ablation_random",
        "ablation_all_at_once",
    )
    # evaluation
    c.metrics = ("euclidean", "cosine")
    c.precision_k = 100
    c.eval_chunk = 256
    c.eval_database = 0  # 0 = all 60000 training images
    c.eval_queries = 0  # 0 = all 10000 test images (the run in docs used 500, see there)
    c.eval_auxiliary = True
    c.eval_teacher = True
    # "all": train and evaluate in one process; "train" / "eval": processes on the same workdir,
    # an eval one waits for each model's TRAINED mark (evaluation overlaps training); several
    # of each may split the seeds (--config.seeds="(1,)"); "summarize" then assembles the
    # per-model retrieval files into the results JSON, table and PNG without training anything
    c.role = "all"
    # bookkeeping
    c.ckpt_every = 100
    c.log_every = 50
    c.progress = False
    c.scale_note = (
        "scaled down for a shared 2-core CPU: an epoch is epoch_images images (reference: the "
        "full training set); stage structure, order and relative lengths as the reference; "
        "teacher and auxiliary trained once (seed 0), students over 3 seeds; retrieval exact on "
        "the full 60k database x 10k queries"
    )
    return c
