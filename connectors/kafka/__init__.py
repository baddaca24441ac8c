"""The kafka connector (not built yet: this package only reserves its place)."""
