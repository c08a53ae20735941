"""The data core: prompts and parsing, file formats and JSON files, images, run folders and stats.
It imports nothing else of adamllm."""
