"""The local vLLM engine: a pinned CPU build of vLLM in its own environment, and running it.

vLLM pins its own torch, transformers and compressed-tensors, which differ from the quantizer's, so it
never shares ``.venv``: ``make vllm`` installs it into ``~/.cache/qmo/engines/`` (keyed by version and lock
file). ``qmo serve`` and the serving tests find it there without flags.
"""
