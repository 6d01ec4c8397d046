"""The quantize Job's work (DESIGN §7): source -> <out>.partial -> validated, manifested -> rename to <out>.

Everything heavy (torch, transformers, llm-compressor) is imported inside functions, so ``qmo --help``
and the operator never pay for it. A run is restartable: a stale ``.partial`` is removed first, and an
existing ``<out>`` with a valid manifest is verified and reused (the Job's retry after a late failure).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qmo import __version__
from qmo.api.backends import DEFAULT_BACKEND
from qmo.quantizer.recipes import COPY_ONLY, Recipe, RecipeError, build_modifiers, validate

log = logging.getLogger("qmo.quantizer")

MANIFEST = "qmo-manifest.json"
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
BUILTIN_CALIBRATION = (
    "The quick brown fox jumps over the lazy dog while the operator plans GPU memory for the model.",
    "Kubernetes schedules pods onto nodes; a Job runs a pod to completion and records its result.",
    "Quantization stores weights in fewer bits, trading a little accuracy for memory and speed.",
    "In 1969 the first humans walked on the Moon, and the world watched on television.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside chloroplasts.",
    "The central bank raised interest rates by a quarter point to slow inflation.",
    "Bonjour, je voudrais réserver une table pour deux personnes ce soir à vingt heures.",
)


class WorkerError(RuntimeError):
    """The run failed for a reason worth reporting in the artifact's status."""


@dataclass
class Options:
    recipe: Recipe
    out: Path
    source: Path | None = None
    hf_repo: str | None = None
    revision: str | None = None
    key: str | None = None
    calibration_dir: Path | None = None
    calibration_jsonl: Path | None = None
    calibration_dataset: str | None = None
    termination_log: Path | None = None
    validation_prompts: int = 3
    evaluate: bool = True
    """Measure quality.json against the source (perplexity, KL, top-1) after quantizing."""
    eval_texts: Iterable[str] | None = None
    """The evaluation text (read only as far as the token budget); None is the built-in public-domain corpus."""
    eval_dataset: str | None = None
    eval_tokens: int = 2048
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self, timings: dict[str, float], name: str) -> None:
        self.timings, self.name = timings, name

    def __enter__(self) -> None:
        self.started = time.monotonic()
        log.info("%s ...", self.name)

    def __exit__(self, *_: Any) -> None:
        elapsed = time.monotonic() - self.started
        self.timings[self.name] = round(elapsed, 3)
        log.info("%s done in %.1f s", self.name, elapsed)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def files_of(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            yield path


def verify_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a finished output, after checking every file's size and digest against it."""
    manifest = json.loads((directory / MANIFEST).read_text())
    for entry in manifest["files"]:
        path = directory / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"] or sha256_of(path) != entry["sha256"]:
            raise WorkerError(f"{path} does not match {MANIFEST}")
    return dict(manifest)


# Enough for transformers' AutoTokenizer: any one of these sets (fast JSON, SentencePiece, byte-level BPE,
# WordPiece, T5's SentencePiece, Mistral's tekken), or a *.tiktoken file.
TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.json", "merges.txt"),
    ("vocab.txt",),
    ("spiece.model",),
    ("tekken.json",),
)
TOKENIZER_FILES_TEXT = ", ".join(" + ".join(names) for names in TOKENIZER_FILE_SETS) + " or a *.tiktoken file"
# What the Job downloads from the hub: config and tokenizer first (a few kB), the weights only once they check out.
HUB_METADATA_PATTERNS = ("*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*")


class SourceError(WorkerError):
    """The source lacks something the run needs; found before any heavy work (exit 2, like a bad flag)."""


def has_tokenizer(directory: Path) -> bool:
    if any(all((directory / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        return True
    return any(directory.glob("*.tiktoken"))


def missing_tokenizer_message(directory: Path, *, origin: str, remedy: str) -> str:
    """What is missing, what is there, and how to provide it, for a source with no tokenizer."""
    present = sorted(p.name for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    return (
        f"{origin} has no tokenizer: none of {TOKENIZER_FILES_TEXT} is there (it holds {', '.join(present) or 'nothing'}). "
        f"Quantizing needs the tokenizer of the model the weights came from, and vLLM serves with it: {remedy}"
    )


def check_tokenizer(directory: Path, options: Options, *, origin: str, remedy: str) -> None:
    """Refuse a source without a tokenizer before loading anything; a copy-only method only warns (vLLM
    may get ``--tokenizer`` from spec.serving.extraArgs)."""
    if has_tokenizer(directory):
        return
    message = missing_tokenizer_message(directory, origin=origin, remedy=remedy)
    if options.recipe.method in COPY_ONLY:
        log.warning("%s", message)
        return
    raise SourceError(message)


def resolve_source(options: Options) -> Path:
    if options.source is not None:
        if not (options.source / "config.json").is_file():
            raise SourceError(f"--source {options.source}: no config.json there")
        check_tokenizer(
            options.source,
            options,
            origin=f"--source {options.source}",
            remedy="copy its tokenizer files (tokenizer.json, tokenizer_config.json) from the base model's"
            ' repository into that directory, or save them there with python -c "from transformers import'
            f" AutoTokenizer; AutoTokenizer.from_pretrained('BASE_MODEL').save_pretrained('{options.source}')\"",
        )
        return options.source
    if not options.hf_repo:
        raise RecipeError("give --source PATH or --hf-repo REPO (with --revision SHA)")
    from huggingface_hub import snapshot_download

    def download(patterns: Iterable[str]) -> Path:
        # The token comes from the environment (the Secret the Job mounts); it is never logged or recorded.
        return Path(
            snapshot_download(
                repo_id=str(options.hf_repo),
                revision=options.revision or "main",
                token=os.environ.get("HF_TOKEN") or None,
                allow_patterns=list(patterns),
            )
        )

    origin = f"--hf-repo {options.hf_repo}@{options.revision or 'main'}"
    metadata = download(HUB_METADATA_PATTERNS)
    if not (metadata / "config.json").is_file():
        raise SourceError(f"{origin}: no config.json there")
    check_tokenizer(
        metadata,
        options,
        origin=origin,
        remedy="add the base model's tokenizer files (tokenizer.json, tokenizer_config.json) to the repository,"
        " or use a repository that has them",
    )
    return download([*HUB_METADATA_PATTERNS, "*.safetensors"])


def calibration_texts(options: Options) -> list[str]:
    recipe = options.recipe
    texts: list[str] = []
    if options.calibration_jsonl is not None:
        for line in options.calibration_jsonl.read_text().splitlines():
            if line.strip():
                value = json.loads(line).get("text")
                if isinstance(value, str) and value:
                    texts.append(value)
    elif options.calibration_dir is not None:
        texts = [
            p.read_text()
            for p in sorted(options.calibration_dir.iterdir())
            if p.is_file() and not p.name.startswith(".")
        ]
    elif options.calibration_dataset is not None:
        from datasets import load_dataset

        try:
            dataset = load_dataset(options.calibration_dataset, split="train", streaming=True)
            for row in dataset:
                text = row.get("text") if isinstance(row, dict) else None
                if isinstance(text, str) and text.strip():
                    texts.append(text)
                if len(texts) >= recipe.calibration_samples:
                    break
        # datasets raises many kinds (not found, no access, HTTP, a bad file): each is the dataset's problem,
        # said in one line in the termination message rather than as a traceback cut to its last 2 KiB.
        except Exception as error:
            raise WorkerError(
                f"--calibration-dataset {options.calibration_dataset!r} could not be read:"
                f" {type(error).__name__}: {error}"
            ) from error
    else:
        texts = list(BUILTIN_CALIBRATION)
    if not texts:
        raise WorkerError("the calibration source holds no text")
    while len(texts) < recipe.calibration_samples:
        texts = texts + texts
    return texts[: recipe.calibration_samples]


def _allow_cpu_only_awq() -> None:
    """llm-compressor 0.14's AWQ pins intermediates to page-locked memory unconditionally, which raises
    on a machine with no accelerator. Pinning only speeds host->GPU copies, so on CPU it is a no-op."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]


class LayerProgress:
    """Logs 'layer i/n, elapsed, ETA' as calibration reaches each decoder layer for the first time."""

    def __init__(self, layers: list[Any]) -> None:
        self.total = len(layers)
        self.seen: set[int] = set()
        self.started = time.monotonic()
        self.handles = [
            layer.register_forward_pre_hook(self._hook(index)) for index, layer in enumerate(layers)
        ]

    def _hook(self, index: int) -> Any:
        def hook(*_: Any) -> None:
            if index in self.seen:
                return
            self.seen.add(index)
            done = len(self.seen)
            elapsed = time.monotonic() - self.started
            eta = elapsed / done * (self.total - done)
            log.info("layer %d/%d, elapsed %.1f s, ETA %.1f s", done, self.total, elapsed, eta)

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def quantize_into(source: Path, partial: Path, options: Options) -> dict[str, Any]:
    """Quantize the source into ``partial`` with the recipe's backend, then validate and evaluate it."""
    backend = options.recipe.backend
    if backend == DEFAULT_BACKEND:
        tokenizer = _llm_compressor(source, partial, options)
    else:
        from qmo.quantizer.legacy import quantize_with

        tokenizer, recorded = quantize_with(backend, source, partial, options)
        log.info("%s: %s", backend, json.dumps(recorded, sort_keys=True, default=str))
    with _Timer(options.timings, "validate"):
        validation = validate_logits(source, partial, tokenizer, options)
    if options.evaluate:
        from qmo.quantizer.evaluate import BUILTIN_DATASET, evaluate, write_quality

        with _Timer(options.timings, "evaluate"):
            quality = evaluate(
                source,
                partial,
                texts=options.eval_texts,
                dataset=options.eval_dataset or BUILTIN_DATASET,
                budget=options.eval_tokens,
            )
        write_quality(partial, quality)
        log.info("quality: %s", json.dumps(quality.as_dict(), sort_keys=True))
    return validation


def _llm_compressor(source: Path, partial: Path, options: Options) -> Any:
    """Run llm-compressor on the source and save a compressed-tensors checkpoint into ``partial``."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot  # type: ignore[attr-defined]  # re-exported without __all__
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = options.recipe
    with _Timer(options.timings, "load"):
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    modifiers = build_modifiers(recipe)
    if recipe.method == "awq":
        _allow_cpu_only_awq()
    dataset = None
    if recipe.needs_calibration:
        texts = calibration_texts(options)
        encoded = tokenizer(texts, truncation=True, max_length=recipe.calibration_seq_len)
        dataset = Dataset.from_dict(
            {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        )
    layers = list(getattr(getattr(model, "model", model), "layers", []))
    progress = LayerProgress(layers)
    try:
        with _Timer(options.timings, "quantize"), torch.no_grad():
            oneshot(
                model=model,
                tokenizer=tokenizer,
                recipe=modifiers,
                dataset=dataset,
                num_calibration_samples=recipe.calibration_samples,
                max_seq_length=recipe.calibration_seq_len,
                shuffle_calibration_samples=False,
            )
    finally:
        progress.close()
    with _Timer(options.timings, "save"):
        model.save_pretrained(partial, save_compressed=True)
        tokenizer.save_pretrained(partial)
    # Validation and evaluation load each model on their own: never two beside the one being quantized.
    del model
    return tokenizer


def validate_logits(source: Path, result: Path, tokenizer: Any, options: Options) -> dict[str, Any]:
    """Reload the result from disk as written (compressed-tensors through transformers; native awq/gptq
    dequantized exactly, see ``qmo.quantizer.packing``) and compare logits with the source."""
    import torch

    from qmo.quantizer.evaluate import load_causal_lm

    reference = load_causal_lm(source, torch.float32)
    quantized = load_causal_lm(result, torch.float32)
    prompts = list(BUILTIN_CALIBRATION[: options.validation_prompts])
    max_abs = 0.0
    relative: list[float] = []
    agreement: list[float] = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", truncation=True, max_length=64)
            expected = reference(**ids).logits.float()
            actual = quantized(**ids).logits.float()
            max_abs = max(max_abs, float((actual - expected).abs().max()))
            relative.append(float((actual - expected).norm() / expected.norm().clamp_min(1e-12)))
            agreement.append(float((actual.argmax(-1) == expected.argmax(-1)).float().mean()))
    return {
        "prompts": len(prompts),
        "max_abs_logit_error": round(max_abs, 6),
        "relative_logit_error": round(sum(relative) / len(relative), 6),
        "top1_agreement": round(sum(agreement) / len(agreement), 4),
    }


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"qmo": __version__}
    for package in (
        "torch",
        "transformers",
        "llmcompressor",
        "compressed-tensors",
        "autoawq",
        "auto-gptq",
        "gptqmodel",
    ):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def write_manifest(directory: Path, options: Options, validation: dict[str, Any] | None) -> dict[str, Any]:
    files: list[dict[str, Any]] = [
        {"path": str(p.relative_to(directory)), "size": p.stat().st_size, "sha256": sha256_of(p)}
        for p in files_of(directory)
    ]
    manifest = {
        "key": options.key,
        "recipe": options.recipe.as_dict(),
        "source": {"path": str(options.source)}
        if options.source
        else {"repo": options.hf_repo, "revision": options.revision},
        "files": files,
        "size_bytes": sum(f["size"] for f in files),
        "versions": library_versions(),
        "timings": dict(options.timings),
        "validation": validation,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def quality_of(directory: Path) -> dict[str, Any] | None:
    from qmo.quantizer.evaluate import QUALITY_FILE

    try:
        quality: dict[str, Any] = json.loads((directory / QUALITY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return quality


def summary_of(directory: Path, manifest: dict[str, Any], *, reused: bool) -> dict[str, Any]:
    return {
        "key": manifest.get("key"),
        "method": manifest["recipe"]["method"],
        "size_bytes": manifest["size_bytes"],
        "manifest_sha256": sha256_of(directory / MANIFEST),
        "durations": {**manifest.get("timings", {}), "total": sum(manifest.get("timings", {}).values())},
        "validation": manifest.get("validation"),
        "quality": quality_of(directory),
        "versions": manifest.get("versions"),
        "reused": reused,
    }


def write_termination(options: Options, summary: dict[str, Any]) -> None:
    if options.termination_log is None:
        return
    text = json.dumps(summary, separators=(",", ":"))
    if len(text.encode()) > TERMINATION_LIMIT:
        kept = ("key", "method", "size_bytes", "manifest_sha256", "durations", "quality")
        summary = {k: summary[k] for k in kept if k in summary}
        text = json.dumps(summary, separators=(",", ":"))[:TERMINATION_LIMIT]
    try:
        options.termination_log.write_text(text)
    except OSError as error:
        log.warning("cannot write the termination message to %s: %s", options.termination_log, error)


def run(options: Options) -> dict[str, Any]:
    """Produce ``options.out`` atomically; return the summary written to the termination log."""
    validate(options.recipe)
    out = options.out
    if (out / MANIFEST).is_file():
        log.info("%s already holds a finished artifact; verifying it", out)
        manifest = verify_manifest(out)
        summary = summary_of(out, manifest, reused=True)
        write_termination(options, summary)
        return summary
    if options.recipe.backend != DEFAULT_BACKEND and options.recipe.method not in COPY_ONLY:
        from qmo.quantizer.legacy import require_runnable

        require_runnable(options.recipe.backend)
    started = time.monotonic()
    with _Timer(options.timings, "download"):
        source = resolve_source(options)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        log.info("removing %s left by an interrupted run", partial)
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    validation: dict[str, Any] | None = None
    if options.recipe.method in COPY_ONLY:
        with _Timer(options.timings, "copy"):
            shutil.copytree(source, partial, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))
        config = json.loads((partial / "config.json").read_text())
        if options.recipe.method == "prequantized" and "quantization_config" not in config:
            raise WorkerError("--method prequantized: the source's config.json has no quantization_config")
    else:
        validation = quantize_into(source, partial, options)
    manifest = write_manifest(partial, options, validation)
    # Same filesystem, so the rename is atomic: readers see no output or a whole one, never a part.
    os.rename(partial, out)
    log.info("wrote %s (%d bytes) in %.1f s", out, manifest["size_bytes"], time.monotonic() - started)
    summary = summary_of(out, manifest, reused=False)
    write_termination(options, summary)
    return summary
