"""kopf wiring only: each module registers its handlers, with explicit ids, on an explicit registry."""
