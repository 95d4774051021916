"""Retrieval metrics, nearest-neighbour indexes and retrieval plots."""
