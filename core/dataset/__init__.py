"""The dataset phase: audit, duplicates, import, curation and the Gate 1 report."""
