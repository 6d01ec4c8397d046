"""The memory-budget planner. Pure: from a model's ``config.json``, a quantization format, a GPU class and
serving targets, predict what vLLM does with the memory and choose the cheapest configuration that fits."""
