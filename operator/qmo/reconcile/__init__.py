"""The only layer that talks to the API server: observe, decide (pure), server-side apply, write status."""
