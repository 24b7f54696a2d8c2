"""Evaluation and measurement: metrics, detector/classifier/pipeline scores, MCQ, bench, dataset analysis."""
