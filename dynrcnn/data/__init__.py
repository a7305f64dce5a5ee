"""Datasets: COCO-format loading, COCO download, the generated miniature benchmark, dataset statistics."""
