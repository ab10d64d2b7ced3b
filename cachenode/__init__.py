"""The cache node: block store, eviction, HTTP server, read-through and membership."""
