"""Mixed-vocabulary distillation: an extremely small BERT with its own WordPiece vocabulary
(Zhao, Gupta, Song, Zhou, "Extremely Small BERT Models from Mixed-Vocabulary Training",
EACL 2021; v1: "Extreme Language Model Compression with Optimal Subwords and Shared
Projections", arXiv 1909.11687).

Pieces (pure functions and small NNX modules; the experiment wires them together):

* :func:`train_wordpiece`: the student's ~5K WordPiece vocabulary, learnt on the corpus
  (:func:`learn_wordpiece_vocab`, deterministic) with the teacher's (uncased BERT) normaliser and
  pre-tokeniser, as a ``tokenizers`` tokenizer (§3.1).
* :class:`MixedSegmenter`: **mixed-vocabulary segmentation** (§3.1): text is pre-tokenised into
  words; each word is segmented with the student vocabulary with probability ``p`` and with the
  teacher's otherwise. Student ids live in their own range ``[V_t, V_t + V_s)``.
  :func:`linear_ramp` is the schedule of ``p`` over training.
* :class:`DualVocabMLM`: **Stage I** (dual training / embedding alignment, §3.1): the teacher reads
  mixed sequences; a student token is embedded as ``P(E_s[id])`` with a learned affine
  ``P: d_s -> d_t``; masked LM with two softmax heads, one per vocabulary (each tied to its
  vocabulary's input embeddings, BERT's head: dense, GELU, LayerNorm, decoder, bias). The MiniLM
  checkpoint ships no MLM head, so the teacher-vocabulary head is learned here as well.
* :class:`BertMLM`: **Stage II** student (same depth as the teacher, width ``d_s``, its own
  vocabulary only; embeddings initialised from Stage I's ``E_s``), trained with MLM plus the
  shared-projection loss of :mod:`jaxcomp.distill.projections` (§3.2).
* :func:`mlm_loss` (cross-entropy over a fixed number of gathered masked positions),
  :func:`export_student` (an ordinary BERT checkpoint: ``config.json`` + ``model.safetensors`` +
  ``tokenizer.json`` + ``vocab.txt``, read back by :func:`jaxcomp.models.bert.load_pretrained`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxcomp.data.mlm import mask_tokens
from jaxcomp.models import bert

__all__ = [
    "SPECIAL_TOKENS",
    "BertMLM",
    "DualVocabMLM",
    "MLMHead",
    "MixedMLMStream",
    "MixedSegmenter",
    "embedding_fidelity",
    "export_student",
    "flat_params",
    "learn_wordpiece_vocab",
    "linear_ramp",
    "make_chunks",
    "mlm_loss",
    "spearman",
    "train_wordpiece",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --------------------------------------------------------------------------------------------
# Vocabularies and mixed segmentation (§3.1).


def learn_wordpiece_vocab(
    word_counts: dict[str, int], vocab_size: int, *, min_frequency: int = 2, prefix: str = "##"
) -> list[str]:
    """The WordPiece vocabulary of ``tokenizers``' ``WordPieceTrainer``, learnt deterministically.

    Words are split into characters (``w``, ``##o``, ``##r``, ``##d``); every character form is
    a piece; then the most frequent adjacent pair is merged (``w`` + ``##o`` -> ``wo``) until
    ``vocab_size`` pieces (with ``SPECIAL_TOKENS`` first) or until no pair occurs
    ``min_frequency`` times. Ties go to the lexicographically smallest pair, so the same counts
    always give the same vocabulary (``tokenizers``' trainer breaks ties by hash-map order, which
    differs from process to process).
    """
    import heapq

    vocab = list(SPECIAL_TOKENS)
    words = sorted(w for w in word_counts if w)
    freqs = [int(word_counts[w]) for w in words]
    symbols = [[w[0]] + [prefix + c for c in w[1:]] for w in words]
    alphabet = sorted({sym for syms in symbols for sym in syms})
    vocab += [a for a in alphabet if a not in vocab]
    known = set(vocab)
    pair_count: dict[tuple[str, str], int] = {}
    pair_words: dict[tuple[str, str], set[int]] = {}
    for i, syms in enumerate(symbols):
        for pair in zip(syms, syms[1:]):
            pair_count[pair] = pair_count.get(pair, 0) + freqs[i]
            pair_words.setdefault(pair, set()).add(i)
    heap = [(-c, pair) for pair, c in pair_count.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # a stale entry
        if -neg < min_frequency:
            break
        a, b = pair
        merged = a + b[len(prefix) :] if b.startswith(prefix) else a + b
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed: dict[tuple[str, str], int] = {}
        for i in sorted(pair_words.pop(pair, ())):
            syms, f = symbols[i], freqs[i]
            for p in zip(syms, syms[1:]):  # remove this word's old pairs
                pair_count[p] -= f
                changed[p] = pair_count[p]
            out, j = [], 0
            while j < len(syms):
                if j + 1 < len(syms) and syms[j] == a and syms[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(syms[j])
                    j += 1
            symbols[i] = out
            for p in zip(out, out[1:]):  # add its new ones
                pair_count[p] = pair_count.get(p, 0) + f
                changed[p] = pair_count[p]
                pair_words.setdefault(p, set()).add(i)
        pair_count.pop(pair, None)
        for p, c in changed.items():
            if p != pair and c > 0:
                heapq.heappush(heap, (-c, p))
    return vocab[:vocab_size]


def train_wordpiece(texts: Sequence[str], vocab_size: int = 5000, *, min_frequency: int = 2):
    """Trains an uncased BERT WordPiece tokenizer of ``vocab_size`` pieces on ``texts``.

    Normaliser, pre-tokeniser, post-processor (``[CLS] $A [SEP]``) and decoder are BERT's, so the
    student segments words exactly like the teacher's pipeline, only with its own pieces. The
    special tokens come first: ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4``. The vocabulary is
    ``learn_wordpiece_vocab`` of the corpus's word counts: the pieces ``tokenizers``'
    ``WordPieceTrainer`` learns, but the same in every process.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    vocab = learn_wordpiece_vocab(counts, vocab_size, min_frequency=min_frequency)
    tok = Tokenizer(
        models.WordPiece(
            {piece: i for i, piece in enumerate(vocab)},
            unk_token="[UNK]",
            max_input_chars_per_word=100,
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##")
    for t in SPECIAL_TOKENS:  # never split, as the trainer's special tokens
        tok.add_special_tokens([t])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def linear_ramp(start: float, end: float, steps: int) -> Callable[[int], float]:
    """``p_t``: linear from ``start`` at step 0 to ``end`` at ``steps``, then constant."""
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"ramp endpoints must be in [0, 1], got {start}, {end}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    return lambda t: float(end if steps == 0 else start + (end - start) * min(t / steps, 1.0))


class MixedSegmenter:
    """Word-level mixed segmentation with a teacher and a student WordPiece tokenizer.

    Words come from the teacher's normaliser + pre-tokeniser; each distinct word is segmented
    once by each tokenizer (cached). Ids: teacher ids as they are, student ids offset by the
    teacher vocabulary size ``V_t``; sequences use the teacher's ``[CLS]``/``[SEP]``/``[PAD]``/
    ``[MASK]``. ``to_student`` maps an all-student sequence to the student's own ids.
    """

    def __init__(self, teacher_tokenizer, student_tokenizer):
        self.teacher, self.student = teacher_tokenizer, student_tokenizer
        self.v_t = teacher_tokenizer.get_vocab_size()
        self.v_s = student_tokenizer.get_vocab_size()
        tid, sid = teacher_tokenizer.token_to_id, student_tokenizer.token_to_id
        self.t_special = {t: tid(t) for t in SPECIAL_TOKENS}
        self.s_special = {t: sid(t) for t in SPECIAL_TOKENS}
        if None in self.t_special.values() or None in self.s_special.values():
            raise ValueError(f"both tokenizers need the special tokens {SPECIAL_TOKENS}")
        self._words: dict[str, int] = {}
        self._t_pieces: list[np.ndarray] = []
        self._s_pieces: list[np.ndarray] = []
        vocab_t = sorted(teacher_tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        vocab_s = sorted(student_tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        self.tokens = [t for t, _ in vocab_t] + [t for t, _ in vocab_s]
        # Random MLM replacements: teacher pieces after BERT's [unusedN] block, student non-specials.
        self.t_low = tid("!") if tid("!") is not None else len(SPECIAL_TOKENS)
        self.s_low = max(self.s_special.values()) + 1

    def words(self, text: str) -> list[str]:
        """The teacher pipeline's words (normalised, pre-tokenised)."""
        norm = self.teacher.normalizer.normalize_str(text)
        return [w for w, _ in self.teacher.pre_tokenizer.pre_tokenize_str(norm)]

    def index(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text as an int32 array of word indices (new words are segmented and cached)."""
        seqs = [self.words(t) for t in texts]
        new = sorted({w for s in seqs for w in s} - self._words.keys())
        if new:
            words = [[w] for w in new]
            enc_t = self.teacher.encode_batch(words, add_special_tokens=False, is_pretokenized=True)
            enc_s = self.student.encode_batch(words, add_special_tokens=False, is_pretokenized=True)
            for w, et, es in zip(new, enc_t, enc_s):
                self._words[w] = len(self._t_pieces)
                self._t_pieces.append(np.asarray(et.ids, np.int32))
                self._s_pieces.append(np.asarray(es.ids, np.int32) + self.v_t)
        return [np.asarray([self._words[w] for w in s], np.int32) for s in seqs]

    def segment(self, word_ids: np.ndarray, use_student: np.ndarray) -> np.ndarray:
        """Concatenated pieces of the words (student pieces where ``use_student``), no specials."""
        pieces = [
            self._s_pieces[w] if s else self._t_pieces[w] for w, s in zip(word_ids, use_student)
        ]
        return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of mixed ids (specials dropped; ``##`` pieces joined to the previous piece)."""
        out: list[str] = []
        specials = set(self.t_special.values()) | {v + self.v_t for v in self.s_special.values()}
        for i in ids:
            if int(i) in specials:
                continue
            tok = self.tokens[int(i)]
            if tok.startswith("##") and out:
                out[-1] += tok[2:]
            else:
                out.append(tok)
        return " ".join(out)

    def batch(
        self,
        sequences: Sequence[np.ndarray],
        p: float,
        rng: np.random.Generator,
        max_len: int,
    ) -> dict[str, np.ndarray]:
        """Mixed-segmented, padded batch: ``input_ids``, ``attention_mask``, ``is_student``
        (per token), ``word_is_student`` counts for checks (``n_words``, ``n_student_words``)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if max_len < 3:
            raise ValueError(f"max_len must be >= 3, got {max_len}")
        n = len(sequences)
        ids = np.full((n, max_len), self.t_special["[PAD]"], np.int32)
        n_words = n_student = 0
        for i, words in enumerate(sequences):
            use = rng.random(len(words)) < p
            n_words += len(words)
            n_student += int(use.sum())
            body = self.segment(words, use)[: max_len - 2]
            row = np.concatenate([[self.t_special["[CLS]"]], body, [self.t_special["[SEP]"]]])
            ids[i, : len(row)] = row
        mask = (ids != self.t_special["[PAD]"]).astype(np.int32)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "n_words": np.int32(n_words),
            "n_student_words": np.int32(n_student),
        }

    def to_student(self, ids: np.ndarray) -> np.ndarray:
        """All-student mixed ids -> the student's own ids (specials mapped, offset removed)."""
        out = np.asarray(ids) - self.v_t
        for name, t in self.t_special.items():
            out = np.where(np.asarray(ids) == t, self.s_special[name], out)
        if np.any((out < 0) | (out >= self.v_s)):
            raise ValueError("to_student: the sequence holds teacher-vocabulary pieces")
        return out.astype(np.int32)


def make_chunks(documents: Sequence[Sequence[str]], max_words: int) -> list[str]:
    """Consecutive sentences of a document joined while they fit in ``max_words`` words."""
    chunks = []
    for doc in documents:
        cur: list[str] = []
        n = 0
        for s in doc:
            k = len(s.split())
            if cur and n + k > max_words:
                chunks.append(" ".join(cur))
                cur, n = [], 0
            cur.append(s)
            n += k
        if cur:
            chunks.append(" ".join(cur))
    return chunks


@dataclasses.dataclass(frozen=True)
class MixedMLMStream:
    """Step-indexed MLM batches for ``jaxcomp.train.fit``.

    ``mode``: ``"mixed"`` (Stage I: each word from the student vocabulary with probability
    ``p_schedule(step)``, ids in the mixed range), ``"student"`` (the student's own ids) or
    ``"teacher"`` (teacher ids). Masking is BERT's (15%, 80/10/10); a random replacement comes
    from the vocabulary of the token it replaces.
    """

    segmenter: MixedSegmenter
    sequences: Sequence[np.ndarray]
    batch_size: int
    max_len: int
    mode: str = "mixed"
    p_schedule: Callable[[int], float] = lambda t: 0.5
    seed: int = 0
    mask_prob: float = 0.15

    def __post_init__(self):
        if self.mode not in ("mixed", "student", "teacher"):
            raise ValueError(f"mode must be 'mixed', 'student' or 'teacher', got {self.mode!r}")
        if not 1 <= self.batch_size <= len(self.sequences):
            raise ValueError(
                f"batch_size must be in [1, {len(self.sequences)}], got {self.batch_size}"
            )

    def batch(self, step: int) -> dict[str, np.ndarray]:
        seg = self.segmenter
        n = len(self.sequences)
        epoch, i = divmod(int(step), n // self.batch_size)
        perm = np.random.default_rng((self.seed, epoch)).permutation(n)
        idx = perm[i * self.batch_size : (i + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, int(step), 1))
        p = {"mixed": None, "student": 1.0, "teacher": 0.0}[self.mode]
        p = self.p_schedule(int(step)) if p is None else p
        b = seg.batch([self.sequences[j] for j in idx], p, rng, self.max_len)
        ids = b["input_ids"]
        specials = np.isin(ids, list(seg.t_special.values()))
        is_student = ids >= seg.v_t
        if self.mode == "student":
            ids = seg.to_student(ids)
            low, high, mask_id = seg.s_low, seg.v_s, seg.s_special["[MASK]"]
        else:
            low = np.where(is_student, seg.v_t + seg.s_low, seg.t_low)
            high = np.where(is_student, seg.v_t + seg.v_s, seg.v_t)
            mask_id = seg.t_special["[MASK]"]
        out = mask_tokens(
            ids, ~specials, rng, mask_id=mask_id, low=low, high=high, mask_prob=self.mask_prob
        )
        out["attention_mask"] = b["attention_mask"]
        return out


# --------------------------------------------------------------------------------------------
# Models.


class MLMHead(nnx.Module):
    """BERT's MLM transform (dense, GELU, LayerNorm) and output bias; the decoder matrix is
    passed in (tied to the input embeddings)."""

    def __init__(self, hidden: int, vocab_size: int, *, eps: float = 1e-12, rngs: nnx.Rngs):
        self.dense = nnx.Linear(hidden, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, epsilon=eps, use_fast_variance=False, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((vocab_size,)))

    def __call__(self, h: jax.Array, decoder: jax.Array) -> jax.Array:
        x = self.norm(jax.nn.gelu(self.dense(h), approximate=False))
        return x @ decoder.T + self.bias[...]


def gather_positions(x: jax.Array, positions: jax.Array) -> jax.Array:
    """``x[b, positions[b, k]]``: ``(B, T, ...) -> (B, K, ...)``."""
    return jnp.take_along_axis(x, positions.reshape(positions.shape + (1,) * (x.ndim - 2)), 1)


def masked_positions(weights: jax.Array, k: int) -> jax.Array:
    """The first ``k`` masked positions per row (static shape; extra masks beyond ``k`` drop)."""
    return jnp.argsort(-weights, axis=-1, stable=True)[:, :k]


def mlm_loss(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(weighted mean cross-entropy, correct count, weight sum)`` at gathered positions."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) * weights)
    total = jnp.sum(weights)
    return jnp.sum(ce * weights) / jnp.maximum(total, 1.0), correct, total


class DualVocabMLM(nnx.Module):
    """Stage I: the teacher reads mixed-vocabulary sequences (Zhao et al., §3.1, Fig. 1).

    A teacher token ``i < V_t`` is embedded by the teacher's ``E_t[i]``, a student token
    ``V_t + j`` by ``P(E_s[j])`` (``E_s: (V_s, d_s)``, ``P: d_s -> d_t`` affine). Two MLM heads
    predict masked pieces: one over the teacher vocabulary (decoder ``E_t``), one over the student
    vocabulary (decoder ``P(E_s)``).
    """

    def __init__(self, teacher: bert.BertModel, student_vocab: int, d_s: int, *, rngs: nnx.Rngs):
        cfg = teacher.config
        self.v_t, self.v_s = cfg.vocab_size, student_vocab
        self.teacher = teacher
        self.student_embed = nnx.Embed(
            student_vocab, d_s, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
        )
        self.proj = nnx.Linear(d_s, cfg.hidden_size, rngs=rngs)
        self.teacher_head = MLMHead(cfg.hidden_size, self.v_t, eps=cfg.layer_norm_eps, rngs=rngs)
        self.student_head = MLMHead(cfg.hidden_size, self.v_s, eps=cfg.layer_norm_eps, rngs=rngs)

    def projected_student_embeddings(self) -> jax.Array:
        return self.proj(self.student_embed.embedding[...])

    def __call__(self, input_ids, attention_mask, positions):
        """Hidden states gathered at ``positions`` and the two heads' logits there."""
        is_student = input_ids >= self.v_t
        e_t = self.teacher.embeddings.word_embeddings(jnp.where(is_student, 0, input_ids))
        e_s = self.proj(self.student_embed(jnp.where(is_student, input_ids - self.v_t, 0)))
        x = jnp.where(is_student[..., None], e_s, e_t)
        h = self.teacher(input_ids, attention_mask, inputs_embeds=x)
        h = gather_positions(h, positions)
        logits_t = self.teacher_head(h, self.teacher.embeddings.word_embeddings.embedding[...])
        logits_s = self.student_head(h, self.projected_student_embeddings())
        return logits_t, logits_s

    def loss(self, batch, max_predictions: int):
        """Sum of the two heads' MLM losses (each over the masked pieces of its vocabulary)."""
        pos = masked_positions(batch["mlm_weights"], max_predictions)
        labels = gather_positions(batch["mlm_labels"], pos)
        w = gather_positions(batch["mlm_weights"], pos)
        logits_t, logits_s = self(batch["input_ids"], batch["attention_mask"], pos)
        is_s = labels >= self.v_t
        lt, ct, nt = mlm_loss(logits_t, jnp.where(is_s, 0, labels), w * ~is_s)
        ls, cs, ns = mlm_loss(logits_s, jnp.where(is_s, labels - self.v_t, 0), w * is_s)
        metrics = {
            "mlm_teacher": lt,
            "mlm_student": ls,
            "acc_teacher": ct / jnp.maximum(nt, 1.0),
            "acc_student": cs / jnp.maximum(ns, 1.0),
            "student_share": ns / jnp.maximum(ns + nt, 1.0),
        }
        return lt + ls, metrics


class BertMLM(nnx.Module):
    """A BERT encoder with BERT's MLM head tied to its word embeddings (the Stage II student)."""

    def __init__(self, cfg: bert.BertConfig, *, rngs: nnx.Rngs):
        self.bert = bert.BertModel(cfg, rngs=rngs)
        self.head = MLMHead(cfg.hidden_size, cfg.vocab_size, eps=cfg.layer_norm_eps, rngs=rngs)

    def __call__(self, input_ids, attention_mask, positions):
        h = gather_positions(self.bert(input_ids, attention_mask), positions)
        return self.head(h, self.bert.embeddings.word_embeddings.embedding[...])

    def loss(self, batch, max_predictions: int):
        pos = masked_positions(batch["mlm_weights"], max_predictions)
        labels = gather_positions(batch["mlm_labels"], pos)
        w = gather_positions(batch["mlm_weights"], pos)
        loss, correct, total = mlm_loss(
            self(batch["input_ids"], batch["attention_mask"], pos), labels, w
        )
        return loss, {"mlm": loss, "acc": correct / jnp.maximum(total, 1.0)}


def flat_params(tree) -> dict[str, jax.Array]:
    """A (pure) NNX state as ``{"a/b/c": array}`` (the names the projection loss matches)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v
        for path, v in leaves
    }


# --------------------------------------------------------------------------------------------
# Evaluation.


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (average ranks for ties)."""

    def rank(x):
        x = np.asarray(x, np.float64)
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=r)
        return (sums / counts)[inv]

    ra, rb = rank(a), rank(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / np.sqrt((ra @ ra) * (rb @ rb)))


def embedding_fidelity(student_emb: np.ndarray, teacher_emb: np.ndarray) -> float:
    """Sentence-embedding fidelity: Spearman between the upper triangles of the student's and the
    teacher's cosine-similarity matrices (rows are L2-normalised embeddings of the same texts)."""
    iu = np.triu_indices(len(teacher_emb), 1)
    return spearman((student_emb @ student_emb.T)[iu], (teacher_emb @ teacher_emb.T)[iu])


# --------------------------------------------------------------------------------------------
# Export.


def export_student(model: BertMLM, tokenizer, path: str | os.PathLike, *, dtype=np.float32) -> int:
    """Writes ``model`` as a Hugging Face BERT checkpoint directory and returns its weight bytes.

    ``model.safetensors`` holds the encoder under HF key names plus the MLM head as
    ``cls.predictions.*`` (``load_pretrained`` skips ``cls.*``); ``config.json`` is a
    ``BertForMaskedLM`` config; ``tokenizer.json`` and ``vocab.txt`` are the student tokenizer.
    """
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    cfg = model.bert.config
    if tokenizer.get_vocab_size() != cfg.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.get_vocab_size()} pieces, the model {cfg.vocab_size}"
        )
    tensors = bert.hf_state_dict(model.bert)
    head = model.head
    tensors["cls.predictions.transform.dense.weight"] = np.asarray(head.dense.kernel[...]).T
    tensors["cls.predictions.transform.dense.bias"] = np.asarray(head.dense.bias[...])
    tensors["cls.predictions.transform.LayerNorm.weight"] = np.asarray(head.norm.scale[...])
    tensors["cls.predictions.transform.LayerNorm.bias"] = np.asarray(head.norm.bias[...])
    tensors["cls.predictions.bias"] = np.asarray(head.bias[...])
    tensors = {k: np.ascontiguousarray(v.astype(dtype)) for k, v in tensors.items()}
    file = os.path.join(path, "model.safetensors")
    save_file(tensors, file, metadata={"format": "pt"})
    config = {
        **{k: v for k, v in dataclasses.asdict(cfg).items() if k != "add_pooler"},
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "position_embedding_type": "absolute",
        "torch_dtype": np.dtype(dtype).name,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    tokenizer.save(os.path.join(path, "tokenizer.json"))
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(t for t, _ in vocab) + "\n")
    return os.path.getsize(file)
