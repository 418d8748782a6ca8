"""scripts/focal_classification.py: the average precision and the comparison of BCE, alpha-BCE, focal,
the other modulated CEs and Poly-1."""
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "focal_classification.py"
spec = importlib.util.spec_from_file_location("focal_classification", SCRIPT)
fc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fc)

ROW = re.compile(r"^\| ([^|]+?) \| ([\d.]+) ± ([\d.]+) \|", re.M)
ALL = {"BCE", "α-balanced", "focal", "cos(p_t)", "exp(−p_t)", "exp(−p_t²)", "Poly-1"}


def test_average_precision_hand_computed():
    # Positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
    assert fc.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)
    # A tie forms one threshold: precision 1/2 at recall 1.
    assert fc.average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    assert fc.average_precision(np.array([0.1, 0.9, 0.3]), np.array([0, 1, 0])) == 1.0
    assert np.isnan(fc.average_precision(np.array([0.1, 0.2]), np.array([0, 0])))


def test_average_precision_matches_rank_definition_without_ties():
    rng = np.random.default_rng(0)
    scores, labels = rng.random(500), (rng.random(500) < 0.1).astype(int)
    order = np.argsort(-scores)
    hits = np.cumsum(labels[order])
    ranks = np.nonzero(labels[order])[0]
    expected = np.mean(hits[ranks] / (ranks + 1))  # mean precision at each positive's rank
    assert fc.average_precision(scores, labels) == pytest.approx(expected)


def _rows(text: str) -> dict:
    return {m[1].split(" ")[0]: float(m[2]) for m in ROW.finditer(text)}


def test_generated_data_compares_every_loss(capsys):
    x, y = fc.make_dataset(3000, 8, 0.01, seed=1)
    assert x.shape == (3000, 8) and y.mean() == pytest.approx(0.01, abs=0.002)
    rc = fc.main(["--samples", "3000", "--dim", "8", "--pos-rate", "0.03", "--epochs", "60", "--seeds", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = _rows(out)
    assert set(rows) == ALL, out
    assert "| Poly-1 focal (ε=1, γ=2, α=0.25) |" in out and "| cos(p_t) CE (α=0.25) |" in out
    # Every loss learns far above chance (the positive rate).
    assert all(0.1 < v <= 1 for v in rows.values()), out
    assert len(set(rows.values())) == len(ALL), out  # each loss is really a different objective


def test_csv_input_and_errors(tmp_path, capsys):
    x, y = fc.make_dataset(1500, 4, 0.04, seed=2)
    path = tmp_path / "data.csv"
    lines = ["f0,f1,is_fraud,f2,f3"] + [f"{a},{b},{'true' if t else 'false'},{c},{d}" for (a, b, c, d), t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")
    assert fc.main(["--csv", str(path), "--target", "is_fraud", "--epochs", "40", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "1500 rows, 4 features, 4.00% positive" in out
    assert len(_rows(out)) == len(ALL)
    assert fc.main(["--csv", str(path), "--target", "is_fraud", "--epochs", "5", "--seeds", "1",
                    "--losses", "exp_sq,poly1"]) == 0
    assert set(_rows(capsys.readouterr().out)) == {"exp(−p_t²)", "Poly-1"}
    assert fc.main(["--csv", str(path), "--target", "is_fraud", "--losses", "focal,tanh"]) == 2
    assert "--losses" in capsys.readouterr().err
    path.write_text("f0,label\n1.0,0\nabc,1\n")
    assert fc.main(["--csv", str(path)]) == 2
    assert "column 'f0'" in capsys.readouterr().err
    assert fc.main(["--csv", str(path), "--target", "nope"]) == 2
    assert "no column 'nope'" in capsys.readouterr().err
    path.write_text("f0,label\n1.0,0\n2.0,2\n")
    assert fc.main(["--csv", str(path)]) == 2
    assert "must be 0/1" in capsys.readouterr().err
