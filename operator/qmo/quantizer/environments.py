"""The quantize workers' own environments: one per legacy backend, each installed exactly from its lock.

AutoAWQ and AutoGPTQ are archived upstream and work only on their last stacks (torch 2.6, transformers
4.51); GPTQModel wants a torch and transformers newer than llm-compressor's. None of them can share
``.venv`` (llm-compressor's stack) or each other's environment, so each has a lock file in ``envs/``
(generated from ``envs/<name>.in`` by ``python -m qmo.engine.lock --worker <name>``, every file with its
sha256), installed by ``make worker-envs`` into ``~/.cache/qmo/workers/<name>-<lock digest>/``. The
worker image of each backend installs the same lock (images/quantizer-<name>), so what the tests ran is
what the image holds.

Standard library only: ``qmo quantize`` consults it before anything heavy is imported.
"""

from __future__ import annotations

from pathlib import Path

from qmo.engine.install import LockedEnvironment

ENVS_DIR = Path(__file__).with_name("envs")


WORKER_ENVIRONMENTS: dict[str, LockedEnvironment] = {
    "autoawq": LockedEnvironment(
        name="autoawq",
        title="AutoAWQ 0.2.9 worker environment",
        lock=ENVS_DIR / "autoawq.txt",
        group="workers",
        check="import awq, transformers",
    ),
    "autogptq": LockedEnvironment(
        name="autogptq",
        title="AutoGPTQ 0.7.1 worker environment",
        lock=ENVS_DIR / "autogptq.txt",
        group="workers",
        check="import auto_gptq, transformers",
        source_builds=("auto-gptq",),
        build_environment={"BUILD_CUDA_EXT": "0"},
    ),
    "gptqmodel": LockedEnvironment(
        name="gptqmodel",
        title="GPTQModel 7.7.0 worker environment",
        lock=ENVS_DIR / "gptqmodel.txt",
        group="workers",
        check="import gptqmodel",
    ),
}
