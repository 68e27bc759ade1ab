"""benchmarks/compare_runs.py on two small synthetic runs of the same self-edits."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_runs  # noqa: E402


def _run(path: Path, scores: dict[str, list[float]]) -> Path:
    path.mkdir()
    with open(path / "units.jsonl", "w") as f:
        for cid, rs in scores.items():
            f.write(json.dumps({"unit": f"r1/eval/{cid}/base", "score": 0.0}) + "\n")
            for j, r in enumerate(rs):
                f.write(json.dumps({"unit": f"r1/eval/{cid}/{j}/s0", "score": r}) + "\n")
    return path


def test_compare_runs_prints_rank_agreement_and_pick_value(tmp_path, capsys):
    assert compare_runs.ranks([0.5, 0.1, 0.5, 0.9]) == [1.5, 0.0, 1.5, 3.0]
    a = _run(tmp_path / "a", {"p1": [0.2, 0.6, 0.4], "p2": [0.0, 0.0, 1.0]})
    b = _run(tmp_path / "b", {"p1": [0.2, 0.4, 0.6], "p2": [0.0, 0.5, 0.5]})
    assert compare_runs.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "6 paired evaluations, 2 baselines" in out and "equal rewards: 2/6" in out
    assert "same top-1 pick: 1/2 passages" in out  # this line breaks ties by the later sample (p2/2 in both)
    # b picks p1/2 (a: 0.4) and, on its tie, the earlier p2/1 (a: 0.0); a picks 0.6 and 1.0; a's mean 0.367
    assert "a's reward of the top-1 picks: b's 0.200, a's own 0.800, a random pick 0.367" in out
