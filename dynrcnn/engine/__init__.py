"""Training: the trainer loop, its hooks, and the backbone pretraining recipe."""
