"""qmo: the QuantizedModel operator.

Turns one ``QuantizedModel`` resource into a right-sized vLLM service: plan the GPU memory, quantize
the weights in a Job into a shared cache, and roll out vLLM with the planned arguments.
"""

__version__ = "0.1.0"
