"""Stage 1-2 inputs: corpus reading, annotation into token sequences, sense-position sampling."""
