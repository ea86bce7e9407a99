"""The terminal UI: Textual widgets over :mod:`tuitop.snapshot` (views only read the store)."""
