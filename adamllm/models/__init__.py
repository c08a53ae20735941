"""Loading, checking and saving the models (and converting the LLaVA repo's checkpoints)."""
