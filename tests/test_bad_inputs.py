"""The bad-input catalogue (benchmarks/hardening.py): every malformed input across the modalities
gets its documented outcome — a one-line error naming the sample, or a documented handling."""

import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import hardening  # noqa: E402

CASES = hardening.cases()


def test_the_catalogue_covers_every_modality_with_at_least_30_inputs():
    assert len(CASES) >= 30
    assert {c.modality for c in CASES} >= {"text", "image", "audio", "rl", "model", "checkpoint"}
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_outcome_is_as_documented(case, tmp_path):
    ok, what = hardening.check(case, tmp_path)
    assert ok, f"{case.name}: expected {case.outcome} {getattr(case.expect, '__name__', '')} /{case.pattern}/, got {what}"
