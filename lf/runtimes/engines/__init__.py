"""Small entry points that run an engine in the foreground of a daemon process."""
