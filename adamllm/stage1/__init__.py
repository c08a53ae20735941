"""Stage 1: merge the seed data, then fine-tune the synthesizer on it."""
