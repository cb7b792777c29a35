"""Scan data for training: preprocessing shared with inference, datasets, splits, data module."""
