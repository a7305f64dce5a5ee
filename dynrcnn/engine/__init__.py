"""Training: the trainer loop, its event storage, hooks and writers, and the backbone pretraining recipe."""
