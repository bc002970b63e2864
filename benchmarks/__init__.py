"""Benchmarks (not tests): train step, input pipeline, tokenizer/cache build, inference."""
