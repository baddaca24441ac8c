"""The sqs connector (not built yet: this package only reserves its place)."""
