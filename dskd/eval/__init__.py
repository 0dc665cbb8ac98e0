"""Stage 6: evaluation (held-out perplexity, lm-eval harness glue, lexical probe) and arm comparison."""
