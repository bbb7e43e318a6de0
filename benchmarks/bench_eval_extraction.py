"""How well the rule scorer agrees with a careful human grader on realistic benchmark responses.

Scores the probe set in tests/data/eval_probes/ (MathVista, MathVerse and MathVision records in
their published layouts, read by the real loaders, and 300 responses with human verdicts) with
`mathse.answers.scoring.score_response` and prints, as `name: value` lines:

* eval_probe_agreement: share of responses where the rules give the human verdict (target >= 0.95);
* eval_probe_wrong_passed: wrong answers the rules pass (target 0);
* eval_correct_unextracted_share: share of the correct answers in which the rules find no answer
  at all (target <= 0.05); these are what the optional LLM judge (`eval.judge`) reads;
* the same figures on the held-out part alone (responses written after the rules were changed and
  scored once, not tuned against).

    python benchmarks/bench_eval_extraction.py [--show]   # --show: list every disagreement
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mathse.testing.eval_probes import ProbeReport, grade_probes, load_probes  # noqa: E402

PROBES = ROOT / "tests" / "data" / "eval_probes"


def _show(report: ProbeReport) -> None:
    for label, rows in (("WRONG PASSED", report.wrong_passed), ("correct, scored wrong", report.correct_failed)):
        for probe, score in rows:
            print(
                f"  {label}: line {probe.line} {probe.benchmark}/{probe.item.id} ({probe.note}): "
                f"{probe.response[-80:]!r} -> extracted {score.extracted!r}",
                file=sys.stderr,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="list the responses where rules and human disagree")
    args = parser.parse_args()

    probes = load_probes(PROBES)
    start = time.perf_counter()
    report = grade_probes(probes)
    seconds = time.perf_counter() - start
    heldout = grade_probes([p for p in probes if p.part.startswith("heldout")])
    if args.show:
        _show(report)
    by_layout = {name: sum(p.benchmark == name for p in probes) for name in ("mathvista", "mathverse", "mathvision")}
    print(f"probe set: {report.total} responses {by_layout}, {report.human_correct} correct by the human grader")
    print(f"eval_probe_responses: {report.total}")
    print(f"eval_scoring_ms_per_response: {1000 * seconds / report.total:.2f}")
    print(f"eval_heldout_responses: {heldout.total}")
    print(f"eval_heldout_agreement: {heldout.agreement:.3f}")
    print(f"eval_heldout_wrong_passed: {len(heldout.wrong_passed)}")
    print(f"eval_heldout_unextracted_share: {heldout.unextracted_share:.3f}")
    print(f"eval_correct_scored_wrong: {len(report.correct_failed)}")
    print(f"eval_correct_unextracted_share: {report.unextracted_share:.3f}")
    print(f"eval_probe_wrong_passed: {len(report.wrong_passed)}")
    print(f"eval_probe_agreement: {report.agreement:.3f}")


if __name__ == "__main__":
    main()
