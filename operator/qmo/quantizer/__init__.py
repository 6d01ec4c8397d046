"""The worker that runs inside the quantize Job. Imports torch lazily; never imported by the operator."""
