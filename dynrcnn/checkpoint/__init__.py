"""Saving and loading state: training checkpoints, backbone weights, published-weight conversion."""
