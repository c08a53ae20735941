"""What a person reads of a run: the HTML report, and the export to a datasets dataset with its card."""
