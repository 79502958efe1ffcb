"""Stage: evaluation — eval suites, lm-evaluation-harness benchmarks, the judged comparison and the release gate."""
