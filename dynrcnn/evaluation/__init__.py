"""Evaluation: COCO metrics, interval statistics, prediction on images."""
