"""Evaluation metrics: accuracy, mAP, mIoU and attention localisation."""
