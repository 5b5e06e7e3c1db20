"""Rendering of manifests and reports (the library itself never prints)."""
