"""Adversarial training: train state, losses and regularisers, the jitted step, the loop."""
