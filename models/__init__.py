"""Model builders and their registry, losses and miners."""
