"""Training: losses, train state, the jitted step."""
