"""Latency measurement: statistics, machine facts, interleaved timing, gates, reports."""
