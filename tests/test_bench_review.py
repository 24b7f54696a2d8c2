"""`slopewatch bench review` end to end on two sample photos: it runs, and its numbers add up."""

import pytest

pytest.importorskip("gradio")


def test_bench_review_runs_a_scripted_reviewer_over_real_photos():
    from app.bench_review import ReviewBenchConfig, bench_review

    out = bench_review(ReviewBenchConfig(photos=2))
    assert out["photos_done"] == 2
    assert out["inputs_per_photo"]["workspace"] < out["inputs_per_photo"]["old_form"]
