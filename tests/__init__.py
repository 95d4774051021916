"""Tests: mirror the source tree; real data from ../shared/data."""
