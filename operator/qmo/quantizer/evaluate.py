"""Quality of a quantized checkpoint against its source on an evaluation text (issue: the quality gate).

Perplexity of both over the same tokens, the mean per-token KL divergence KL(source || quantized) over the
whole vocabulary, and top-1 agreement. The two models are never in memory together: the source runs first
and its next-token log-probabilities are kept on the host in float16 (tokens x vocab x 2 bytes: 0.5 GiB for
2,048 tokens of a 128k vocabulary), then it is freed and the quantized model runs. Deterministic: the same
checkpoints, text and budget give the same figures.
"""

from __future__ import annotations

import gc
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

BUILTIN_DATASET = "qmo-builtin-english"
QUALITY_FILE = "quality.json"
DEFAULT_TOKEN_BUDGET = 2048
CHUNK_TOKENS = 512


@dataclass(frozen=True)
class Quality:
    dataset: str
    tokens: int
    """Scored next-token predictions (the budget, less the first token of each chunk)."""
    source_perplexity: float
    quantized_perplexity: float
    perplexity_increase_percent: float
    kl_mean: float
    top1_agreement: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def builtin_texts() -> list[str]:
    """Public-domain English (Austen, Dickens, Melville, Lincoln, Carroll, the King James Bible, ...)."""
    text = resources.files("qmo.quantizer").joinpath("data/eval-corpus.txt").read_text(encoding="utf-8")
    return [part.strip() for part in text.split("\n\n") if part.strip()]


def dataset_texts(name: str) -> Iterator[str]:
    """The non-empty 'text' values of a Hugging Face dataset's train split, streamed: rows are fetched only
    as far as the token budget reads them. The first row is read now, so a wrong id, a missing token or a
    dataset without a 'text' column fails before hours of quantizing (as a ValueError); the rows are
    streamed afresh when scored, not over a connection left idle meanwhile."""
    from datasets import load_dataset

    try:
        first = next(iter(load_dataset(name, split="train", streaming=True)), None)
    except Exception as error:  # datasets and the hub raise many kinds; each means "cannot read it"
        raise ValueError(f"evaluation dataset {name!r}: {type(error).__name__}: {error}") from error
    if not isinstance(first, dict) or "text" not in first:
        raise ValueError(f"evaluation dataset {name!r} has no 'text' column in its train split")

    def texts() -> Iterator[str]:
        for row in load_dataset(name, split="train", streaming=True):
            text = row.get("text")
            if isinstance(text, str) and text.strip():
                yield text

    return texts()


def token_chunks(
    tokenizer: Any, texts: Iterable[str], *, budget: int, chunk: int = CHUNK_TOKENS
) -> list[list[int]]:
    """The texts as one token stream, cut to ``budget`` tokens, in chunks of at most ``chunk``."""
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if len(stream) >= budget:
            break
    stream = stream[:budget]
    chunks = [stream[i : i + chunk] for i in range(0, len(stream), chunk)]
    return [c for c in chunks if len(c) >= 2]


def _log_probs(model: Any, ids: list[int], device: str) -> Any:
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids], device=device)).logits[0, :-1]
        return torch.log_softmax(logits.float(), dim=-1)


def _dtype_argument(dtype: Any) -> dict[str, Any]:
    """transformers 5 says ``dtype``; the archived backends' 4.51 says ``torch_dtype`` (and would keep an
    unknown ``dtype`` as a config attribute, loading float32)."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return {"dtype": dtype} if major >= 5 else {"torch_dtype": dtype}


def load_causal_lm(path: Path, dtype: Any) -> Any:
    """The checkpoint as a plain transformers model in ``dtype``, in eval mode.

    A native AWQ/GPTQ checkpoint (the legacy backends' output) is dequantized exactly instead of being
    loaded through its kernels: those need CUDA, or on CPU IPEX, which computes differently. What is
    measured is then exactly what the checkpoint holds."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = json.loads((path / "config.json").read_text())
    method = (config.get("quantization_config") or {}).get("quant_method")
    if method not in ("awq", "gptq"):
        model: Any = AutoModelForCausalLM.from_pretrained(path, **_dtype_argument(dtype))
        return model.eval()
    from qmo.quantizer.packing import dequantized_state_dict

    plain = AutoConfig.from_pretrained(path)
    if hasattr(plain, "quantization_config"):
        del plain.quantization_config
    model = AutoModelForCausalLM.from_config(plain)
    state = dequantized_state_dict(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied lm_head is the embedding itself and is not stored; anything else missing is a broken checkpoint.
    tied = {"lm_head.weight"} if getattr(plain, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"{path}: the dequantized weights do not fit the architecture (missing {sorted(set(missing) - tied)[:5]},"
            f" unexpected {sorted(unexpected)[:5]})"
        )
    if tied:
        model.tie_weights()
    return model.to(dtype).eval()


def _load(path: Path, device: str) -> Any:
    import torch

    return load_causal_lm(path, torch.bfloat16).to(device)


def _free(model: Any) -> None:
    import torch

    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(
    source: Path,
    artifact: Path,
    *,
    texts: Iterable[str] | None = None,
    dataset: str = BUILTIN_DATASET,
    budget: int = DEFAULT_TOKEN_BUDGET,
) -> Quality:
    import torch

    from qmo.quantizer.legacy import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(artifact if (artifact / "tokenizer_config.json").exists() else source)
    chunks = token_chunks(tokenizer, texts if texts is not None else builtin_texts(), budget=budget)
    if not chunks:
        raise ValueError(f"the evaluation text {dataset!r} gives fewer than 2 tokens")

    model = _load(source, device)
    reference = [_log_probs(model, ids, device).to("cpu", torch.float16) for ids in chunks]
    _free(model)

    model = _load(artifact, device)
    nll_source = nll_quantized = kl = agree = 0.0
    scored = 0
    for ids, ref16 in zip(chunks, reference, strict=True):
        quantized = _log_probs(model, ids, device).cpu()
        # Renormalised: float16 rounding leaves exp(ref) summing to 1 +- 1e-3, which can push a tiny KL below 0.
        ref = torch.log_softmax(ref16.float(), dim=-1)
        targets = torch.tensor(ids[1:])[:, None]
        nll_source -= float(ref.gather(-1, targets).sum())
        nll_quantized -= float(quantized.gather(-1, targets).sum())
        kl += float((ref.exp() * (ref - quantized)).sum())
        agree += float((ref.argmax(-1) == quantized.argmax(-1)).sum())
        scored += len(ids) - 1
    _free(model)

    source_ppl = math.exp(nll_source / scored)
    quantized_ppl = math.exp(nll_quantized / scored)
    return Quality(
        dataset=dataset,
        tokens=scored,
        source_perplexity=round(source_ppl, 4),
        quantized_perplexity=round(quantized_ppl, 4),
        perplexity_increase_percent=round((quantized_ppl / source_ppl - 1) * 100, 3),
        kl_mean=round(max(kl, 0.0) / scored, 6),
        top1_agreement=round(agree / scored, 4),
    )


def write_quality(directory: Path, quality: Quality) -> None:
    (directory / QUALITY_FILE).write_text(json.dumps(quality.as_dict(), indent=2, sort_keys=True) + "\n")
