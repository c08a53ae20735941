"""AdaMLLM visual instruction synthesis."""
