"""Generation-based evaluation: benchmark readers, answer matching, the harness, local and endpoint answerers."""
