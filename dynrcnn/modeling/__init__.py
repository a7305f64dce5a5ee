"""The detector: Dynamic R-CNN's RoI head, the model builders, RoIAlign."""
