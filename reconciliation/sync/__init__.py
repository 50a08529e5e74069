"""Streams: one module per source stream, turning source objects into sync records."""
