"""Template parser, KG loaders (TSV, Countries layout, pykeen files) and ranking/AUC-PR metrics."""

import re
from pathlib import Path

import numpy as np
import pytest

from jaxcomp.data import kg
from jaxcomp.prover.metrics import auc_pr, evaluate_ranking, filtered_rank, ranking_metrics
from jaxcomp.prover.templates import format_template, load_templates, parse_templates

FIXTURES = Path(__file__).parent / "fixtures"

NLT = """3   #1(X, Y) :- #1(Y, X).

20   #1(X, Y) :-
        #2(X, Z),
        #3(Z, Y).
"""

CLAUSES = """p1(X, Y) :- p2(X, Y)    <20>
p3(X, Y) :- p4(Y, X)    <20>
p(X, Y) :- q(X, Z), q(Z, Y) <3>
"""


def test_parse_nlt_multiline_and_shared_placeholders():
    ts = parse_templates(NLT)
    assert [t.count for t in ts] == [3, 20]
    assert ts[0].predicates == ("#1",) and ts[0].body[0].args == ("Y", "X")
    assert ts[1].predicates == ("#1", "#2", "#3") and len(ts[1].body) == 2
    assert ts[1].variables == ("X", "Y", "Z")


@pytest.mark.parametrize("text,fmt", [(NLT, "nlt"), (CLAUSES, "clauses")])
def test_template_round_trip(text, fmt):
    ts = parse_templates(text, fmt)
    for out_fmt in ("nlt", "clauses"):
        again = parse_templates("\n".join(format_template(t, out_fmt) for t in ts), out_fmt)
        assert again == ts
    assert parse_templates(CLAUSES)[2].predicates == ("p", "q")


@pytest.mark.parametrize(
    "text,fmt,line,msg",
    [
        ("3 #1(X, Y) :- #1(Y, X).\n3 #1(X, Y) :- #2(X, Z, W).\n", "nlt", 2, "binary"),
        ("p(X, Y) :- q(Y, X) <2>\n\np(X, Y) :- q(Y, X), <2>\n", "clauses", 3, "atom"),
        ("p(X, Y) :- q(Y, X) <2>\np(X, Y) <2>\n", "clauses", 2, ":-"),
        ("p(X, Y) :- q(Y, Z) <2>\n", "clauses", 1, "head variable"),
        ("p(X, Y) :- q(Y, X) <x>\n", "clauses", 1, "weight"),
        ("3 #1(X, Y) :- #1(Y, X).\n\n3 #1(X, Y) :- #1(Y, X)\n", "nlt", 3, "unterminated"),
        ("3 #1(X, Y) :- #1(Y, a).\n", "nlt", 1, "variables"),
    ],
)
def test_malformed_templates_name_the_line(text, fmt, line, msg):
    with pytest.raises(ValueError, match=rf"line {line}:.*{msg}"):
        parse_templates(text, fmt)


def test_load_templates_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nlt"):
        load_templates(tmp_path / "nope.nlt")


def test_tsv_loader_and_malformed_line(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("a\tr\tb\n\nb\tr\tc\n")
    assert kg.load_triples(p) == [("a", "r", "b"), ("b", "r", "c")]
    p.write_text("a\tr\tb\nb r c\n")
    with pytest.raises(ValueError, match="line 2"):
        kg.load_triples(p)
    p.write_text("a\tr\tb\na\t\tc\n")
    with pytest.raises(ValueError, match="line 2"):
        kg.load_triples(p)
    with pytest.raises(FileNotFoundError):
        kg.load_triples(tmp_path / "missing.tsv")


@pytest.mark.parametrize(
    "variant,fact",
    [
        ("S1", "locatedIn(asia0_c0,asia)."),  # a test country's region
        ("S2", "locatedIn(asia0_c0,asia_sub0)."),  # a test country's subregion
        ("S3", "locatedIn(asia0_c1,asia)."),  # a test country's neighbour's region
    ],
)
def test_countries_rejects_a_hidden_fact_naming_it(tmp_path, variant, fact):
    import shutil

    d = tmp_path / "countries"
    shutil.copytree(FIXTURES / "countries_tiny", d)
    path = d / f"countries_{variant}.nl"
    path.write_text(path.read_text() + fact + "\n")
    name = fact.rstrip(".").replace(",", ", ")
    with pytest.raises(ValueError, match=rf"countries_{variant}\.nl.*{re.escape(name)}"):
        kg.load_countries(d, variant)


def test_nl_loader_malformed_line(tmp_path):
    p = tmp_path / "k.nl"
    p.write_text("locatedIn(a,b).\nlocatedIn(a b).\n")
    with pytest.raises(ValueError, match="line 2"):
        kg.load_nl_facts(p)


def test_countries_layout_fixture():
    for v, n_train in (("S1", 97), ("S2", 92), ("S3", 86)):
        d = kg.load_countries(FIXTURES / "countries_tiny", v)
        assert len(d["train"]) == n_train
        assert d["regions"] == ["europe", "asia", "africa"]
        assert d["test_labels"]["asia0_c0"] == {"asia"}
        train = set(d["train"])
        assert ("asia0_c0", "locatedIn", "asia") not in train
        assert (("asia0_c0", "locatedIn", "asia_sub0") in train) == (v == "S1")
        # like the canonical files: a dev country keeps its region fact, and is accepted
        assert "europe0_c0" in d["dev"] and ("europe0_c0", "locatedIn", "europe") in train
        # S3 hides the regions of the test countries' neighbours
        assert (("asia0_c1", "locatedIn", "asia") in train) == (v != "S3")
    assert kg.load_countries(FIXTURES / "countries_tiny")["templates_path"].endswith(".nlt")
    with pytest.raises(ValueError, match="variant"):
        kg.load_countries(FIXTURES / "countries_tiny", "S4")


def test_countries_train_path_replaces_the_nl_facts(tmp_path):
    """The mention setting's kept.tsv replaces countries_S1.nl and is checked the same way."""
    d = kg.load_countries(FIXTURES / "countries_tiny", "S1")
    kept = d["train"][::2]
    p = tmp_path / "countries_S1_kept.tsv"
    p.write_text("".join(f"{s}\t{r}\t{o}\n" for s, r, o in kept))
    got = kg.load_countries(FIXTURES / "countries_tiny", "S1", train_path=p)
    assert got["train"] == kept
    assert got["test_labels"] == d["test_labels"] and got["regions"] == d["regions"]
    p.write_text(p.read_text() + "asia0_c0\tlocatedIn\tasia\n")  # a test country's region
    with pytest.raises(ValueError, match=r"countries_S1_kept\.tsv.*locatedIn\(asia0_c0, asia\)"):
        kg.load_countries(FIXTURES / "countries_tiny", "S1", train_path=p)
    with pytest.raises(FileNotFoundError):
        kg.load_countries(FIXTURES / "countries_tiny", "S1", train_path=tmp_path / "none.tsv")


def test_pykeen_files_found_without_import():
    import sys

    d = kg.pykeen_dataset_dir("nations")
    assert (d / "test.txt").is_file()
    assert "pykeen" not in sys.modules
    data = kg.load_pykeen_dataset("nations")
    assert (len(data["train"]), len(data["valid"]), len(data["test"])) == (1592, 199, 201)
    with pytest.raises(ValueError, match="fb15k"):
        kg.pykeen_dataset_dir("fb15k")


def test_filtered_rank_by_hand():
    s = np.array([0.9, 0.8, 0.95, 0.8, 0.1])
    # true = 1 (0.8): above it 0.9, 0.95; tie with 3
    assert filtered_rank(s, 1, []) == 4
    assert filtered_rank(s, 1, [], tie="optimistic") == 3
    assert filtered_rank(s, 1, [], tie="average") == 3.5
    assert filtered_rank(s, 1, [2]) == 3  # 0.95 is another true answer: filtered
    assert filtered_rank(s, 1, [2, 3, 0]) == 1
    m = ranking_metrics([1, 2, 4, 20])
    assert m["mrr"] == pytest.approx((1 + 0.5 + 0.25 + 0.05) / 4)
    assert (m["hits@1"], m["hits@3"], m["hits@10"]) == (0.25, 0.5, 0.75)


def test_evaluate_ranking_both_sides_by_hand():
    # 3 constants; score = fixed table over (s, o) for predicate 0
    table = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.8], [0.7, 0.6, 0.4]])

    def score_fn(g):
        return table[g[:, 1], g[:, 2]]

    test = np.array([[0, 0, 2]])  # true (s=0, o=2)
    # object side: row 0 = [0.1, 0.9, 0.5] -> o=2 has rank 2 (0.9 above); subject side:
    # column 2 = [0.5, 0.8, 0.4] -> s=0 has rank 2. With (0,0,1) known true: object rank 1.
    m = evaluate_ranking(score_fn, test, [(0, 0, 2)], 3)
    assert m["mrr"] == pytest.approx(0.5) and m["hits@1"] == 0.0 and m["hits@3"] == 1.0
    m = evaluate_ranking(score_fn, test, [(0, 0, 2), (0, 0, 1)], 3)
    assert m["mrr"] == pytest.approx(0.75) and m["hits@1"] == 0.5
    # ties: object row [0.5, 0.5, 0.5] -> pessimistic rank 3, optimistic 1, average 2
    flat = np.full((3, 3), 0.5)
    m = evaluate_ranking(
        lambda g: flat[g[:, 1], g[:, 2]], test, [(0, 0, 2)], 3, other_ties=("optimistic", "average")
    )
    assert m["mrr"] == pytest.approx(1 / 3) and m["mrr[optimistic]"] == 1.0
    assert m["mrr[average]"] == pytest.approx(0.5)


def test_auc_pr_by_hand_and_vs_sklearn():
    # ranking: + - + -  -> precision at recalls 0.5, 1.0 = 1, 2/3 -> AP = 0.5 + 0.5 * 2/3
    assert auc_pr([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 + 1 / 3)
    assert auc_pr([0.9, 0.8], [1, 0]) == 1.0
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, 50) / 5.0  # with ties
    y = rng.integers(0, 2, 50)
    assert auc_pr(s, y) == pytest.approx(average_precision_score(y, s))
    with pytest.raises(ValueError, match="positive"):
        auc_pr([0.1], [0])


def _brute_reference_rank(scores, true_index, filtered, names):
    """The reference evaluation loop: drop filtered candidates, list the rest in name order,
    rank = 1 + argsort(argsort(-scores)) (a stable sort: ties keep name order)."""
    drop = set(filtered) - {true_index}
    kept = sorted((c for c in range(len(scores)) if c not in drop), key=lambda c: names[c])
    s = np.array([scores[c] for c in kept])
    return 1 + int(np.argsort(np.argsort(-s, kind="stable"), kind="stable")[kept.index(true_index)])


def _brute_rank(scores, true_index, filtered, tie):
    """Every tie-break order of the tied candidates, enumerated: min / max / mean rank."""
    import itertools

    drop = set(filtered) - {true_index}
    kept = [c for c in range(len(scores)) if c not in drop]
    tied = [c for c in kept if scores[c] == scores[true_index]]
    greater = sum(scores[c] > scores[true_index] for c in kept)
    ranks = [1 + greater + perm.index(true_index) for perm in itertools.permutations(tied)]
    return {"optimistic": min(ranks), "pessimistic": max(ranks), "average": np.mean(ranks)}[tie]


def test_filtered_rank_every_tie_rule_vs_brute_force():
    from jaxcomp.prover.metrics import TIES, name_order

    rng = np.random.default_rng(0)
    for _ in range(60):
        n = int(rng.integers(2, 7))
        scores = rng.integers(0, 3, n) / 2.0  # many ties
        names = [str(x) for x in rng.permutation(["b", "a", "e", "c", "f", "d"])[:n]]
        true = int(rng.integers(n))
        filtered = [int(c) for c in rng.choice(n, int(rng.integers(0, n)), replace=False)]
        order = name_order(names)
        got = {t: filtered_rank(scores, true, filtered, t, order=order) for t in TIES}
        assert got["reference"] == _brute_reference_rank(scores, true, filtered, names)
        for t in ("optimistic", "pessimistic", "average"):
            assert got[t] == pytest.approx(_brute_rank(scores, true, filtered, t))
        assert got["optimistic"] <= got["reference"] <= got["pessimistic"]
    # without an order the reference rule breaks ties by index
    assert filtered_rank(np.array([0.5, 0.5, 0.5]), 1, [], "reference") == 2
    with pytest.raises(ValueError, match="reference"):
        filtered_rank(np.array([0.5]), 0, [], "best")
    with pytest.raises(ValueError, match="'a' twice"):
        name_order(["a", "b", "a"])


def test_evaluate_ranking_reference_ties_follow_names():
    flat = np.full((3, 3), 0.5)  # every candidate tied
    test = np.array([[0, 0, 2]])
    # names: constant 2 sorts first, constant 0 last -> object rank 1, subject rank 3
    m = evaluate_ranking(
        lambda g: flat[g[:, 1], g[:, 2]], test, [(0, 0, 2)], 3, tie="reference",
        other_ties=("pessimistic", "average", "optimistic"), names=["zz", "mm", "aa"],
    )  # fmt: skip
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["mrr[pessimistic]"] == pytest.approx(1 / 3) and m["mrr[optimistic]"] == 1.0
    assert m["mrr[average]"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="names has 2"):
        evaluate_ranking(lambda g: flat[g[:, 1], g[:, 2]], test, [], 3, names=["a", "b"])


def test_load_mentions_reference_layout(tmp_path):
    path = FIXTURES / "countries_tiny" / "countries_S1_mentions.tsv"
    m = kg.load_mentions(path)
    assert m[0] == ("asia0_c0", "[XXX] is a neighbor of [YYY]", "asia0_c1") and len(m) == 3
    assert kg.load_mentions(path, min_count=2) == m[:1]  # the reference's --mentions-min
    p = tmp_path / "m.tsv"
    p.write_text("a\tlives in\tb\n")  # 3 columns: whitespace tokens, count 1
    assert kg.load_mentions(p) == [("a", "lives in", "b")]
    for bad, msg in [
        ("a\t[XXX]:x:[YYY]\tb\t1\na\t[XXX]:x:[YYY]\tb\tmany\n", "line 2: count"),
        ("a\t[XXX]::[YYY]\tb\t1\n", "line 1: empty token"),
        ("a\t[XXX]:x:[YYY]\tb\t1\tz\n", "line 1: expected"),
    ]:
        p.write_text(bad)
        with pytest.raises(ValueError, match=msg):
            kg.load_mentions(p)


def test_countries_experiment_reads_mentions():
    from experiments.configs.gntp_countries import get_config
    from experiments.gntp import load_data

    cfg = get_config()
    kb, *_ = load_data(cfg)
    assert len(kb.mentions) == 0
    cfg.mentions_path = str(FIXTURES / "countries_tiny" / "countries_S1_mentions.tsv")
    kb, train, *_ = load_data(cfg)
    assert len(kb.mentions) == 3 and kb.num_facts == len(train) + 3
    assert {"[XXX]", "neighbor", "[YYY]"} <= set(kb.tokens)
    s, o = kb.mentions[0]
    assert (kb.constants[s], kb.constants[o]) == ("asia0_c0", "asia0_c1")
    cfg.mentions_min = 2
    assert len(load_data(cfg)[0].mentions) == 1


def test_experiment_trains_on_a_users_tsv_with_optional_test(tmp_path):
    """``--config.dataset=tsv``: only train_path is required; with no test set the run trains,
    saves the prover and decodes rules without ranking; with one it ranks every test triple."""
    from experiments.configs.gntp_smoke import get_config
    from experiments.gntp import run
    from jaxcomp.prover.io import load_prover

    people = [f"p{i}" for i in range(8)]
    train = [(a, "knows", b) for a, b in zip(people, people[1:])]
    train += [(b, "knows", a) for a, b in zip(people, people[1:4])]
    (tmp_path / "train.tsv").write_text("".join(f"{s}\t{r}\t{o}\n" for s, r, o in train))
    (tmp_path / "test.tsv").write_text("p5\tknows\tp4\np6\tknows\tp5\n")
    cfg = get_config()
    cfg.dataset, cfg.train_path, cfg.dim, cfg.epochs = "tsv", str(tmp_path / "train.tsv"), 8, 2
    cfg.templates = "p(X, Y) :- q(Y, X) <2>\n"
    res = run(cfg, str(tmp_path / "no_test"))
    assert "mrr" not in res and res["rules"] and len(res["explanations"]) == 5
    params, kb, templates, prover = load_prover(tmp_path / "no_test" / "prover")
    assert set(kb.constants) == set(people) and prover.search_bytes == 64 * 2**20
    cfg.test_path = str(tmp_path / "test.tsv")
    res = run(cfg, str(tmp_path / "with_test"))
    assert res["num_test_triples"] == 2 and 0 < res["mrr"] <= 1


def test_gntp_seeds_summary_equals_numpy(tmp_path):
    """scripts/gntp_seeds.py: per-variant mean/std (ddof=1) and seed-paired differences."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "scripts" / "gntp_seeds.py"
    spec = importlib.util.spec_from_file_location("gntp_seeds", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng(0)
    vals = {v: rng.uniform(0.3, 0.9, size=(3, 2)) for v in ("std", "att")}
    specs = []
    for v, a in vals.items():
        dirs = []
        for seed, (mrr, pess) in enumerate(a):
            d = tmp_path / f"{v}{seed}"
            d.mkdir()
            res = {"config": {"seed": seed}, "train_seconds": 1.0, "mrr": mrr}
            res["mrr[pessimistic]"] = pess
            (d / "results.json").write_text(json.dumps(res))
            dirs.append(str(d))
        specs.append(f"{v}={','.join(dirs)}")
    s = mod.summarise(mod.load(specs))
    np.testing.assert_allclose(s["att"]["mrr"]["mean"], vals["att"][:, 0].mean())
    np.testing.assert_allclose(s["std"]["mrr[pessimistic]"]["std"], vals["std"][:, 1].std(ddof=1))
    d = vals["att"][:, 0] - vals["std"][:, 0]
    np.testing.assert_allclose(s["att"]["mrr"]["minus_std"]["mean"], d.mean())
    np.testing.assert_allclose(s["att"]["mrr"]["minus_std"]["std"], d.std(ddof=1))
    assert "hits@1" not in s["std"] and s["std"]["seeds"] == [0, 1, 2]
    assert "| att |" in mod.table(s)
