"""Kinesis sink (work in progress)."""
