"""Every image installs exactly its lock, and the locks the images share with the tests hold the tested
versions: no Dockerfile pip line names a package of its own, and every image's set is the tested one.

No container engine runs here (`make images` builds them where one does); tests/worker/test_image_locks.py
resolves each lock on this platform.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from qmo.api.backends import BACKENDS, WORKER_IMAGE_REPOSITORY, worker_image
from qmo.cli import SUBCOMMANDS
from qmo.quantizer.environments import WORKER_ENVIRONMENTS

REPO = Path(__file__).parents[2]
TEST_LOCK = REPO / "tests/requirements.txt"
# image directory -> the lock it must install
IMAGE_LOCKS = {
    "operator": "images/operator/requirements.txt",
    "quantizer": "images/quantizer/requirements.txt",
    **{
        f"quantizer-{name}": str(environment.lock.relative_to(REPO))
        for name, environment in WORKER_ENVIRONMENTS.items()
    },
}


def pins(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) of a lock."""
    entries = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
    found = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", entry)
        if match:
            name = match.group(1).lower().replace("_", "-")
            found[name] = (match.group(2), frozenset(re.findall(r"--hash=sha256:([0-9a-f]{64})", entry)))
    return found


def run_commands(dockerfile: Path) -> list[list[str]]:
    """Each shell command of the RUN instructions (continuations joined, split at && and ;)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        if line.startswith("RUN "):
            for part in re.split(r"&&|;", line[4:]):
                if part.strip():
                    commands.append(shlex.split(part))
    return commands


def copies(dockerfile: Path) -> dict[str, str]:
    """COPY destination (as written) -> source, for files copied from the build context."""
    found = {}
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, destination = line.split()[1:]
            for source in sources:
                found[destination.removeprefix("./") if len(sources) == 1 else Path(source).name] = source
    return found


def test_every_backend_has_an_image_named_as_the_operator_defaults_it() -> None:
    directories = {path.parent.name for path in (REPO / "images").glob("*/Dockerfile")}
    assert directories == set(IMAGE_LOCKS)
    for backend in BACKENDS:
        repository = worker_image(backend).rsplit(":", 1)[0]
        assert repository.rsplit("/", 1)[-1] in directories, backend
        assert repository.startswith(WORKER_IMAGE_REPOSITORY)


@pytest.mark.parametrize("image", sorted(IMAGE_LOCKS))
def test_every_pip_line_installs_the_images_lock_and_nothing_unpinned(image: str) -> None:
    dockerfile = REPO / "images" / image / "Dockerfile"
    lock = IMAGE_LOCKS[image]
    copied = copies(dockerfile)
    installed_from: set[str] = set()
    for command in run_commands(dockerfile):
        words = list(command)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):  # VAR=value before the command
            words.pop(0)
        if "install" not in words or words[0] != "pip":
            continue
        assert "--no-deps" in words, f"{image}: {' '.join(command)} may resolve versions of its own"
        targets = [words[i + 1] for i, word in enumerate(words) if word == "-r"]
        # Anything else it installs is the project itself (".", built from the copied source).
        positional = [w for w in words[2:] if not w.startswith("-") and w not in targets and w != ":all:"]
        positional = [w for w in positional if w not in ("auto-gptq",) and not w.startswith("/")]
        assert positional in ([], ["."]), f"{image}: installs {positional} outside its lock"
        if targets:
            assert "--require-hashes" in words, f"{image}: {' '.join(command)}"
        installed_from.update(targets)
    split = re.search(
        r"qmo\.engine\.install split\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)",
        dockerfile.read_text().replace("\\\n", " "),
    )
    sources = set()
    for target in installed_from:
        if split and target in (split.group(3), split.group(4)):
            sources.add(split.group(1))
        else:
            sources.add(copied[target])
    assert sources == {lock}, (image, sources)


@pytest.mark.parametrize("lock", ["images/operator/requirements.txt", "images/quantizer/requirements.txt"])
def test_the_images_locks_hold_the_tested_versions(lock: str) -> None:
    """The operator and quantizer images' sets are subsets of what .venv (the tests) installs, same files."""
    tested = pins(TEST_LOCK)
    image = pins(REPO / lock)
    assert image, lock
    for name, (version, hashes) in image.items():
        assert name in tested, f"{lock}: {name} is not in the tested set"
        assert tested[name][0] == version, f"{lock}: {name} {version}, tested {tested[name][0]}"
        assert hashes and hashes <= tested[name][1], f"{lock}: {name}'s files differ from the tested ones"
    assert {"kopf", "kubernetes", "pydantic"} <= image.keys()
    if "quantizer" in lock:
        assert {"torch", "transformers", "llmcompressor", "compressed-tensors"} <= image.keys()
    else:
        assert "torch" not in image


def test_the_build_context_carries_what_the_dockerfiles_copy() -> None:
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for dockerfile in (REPO / "images").glob("*/Dockerfile"):
        for source in copies(dockerfile).values():
            assert any(source == prefix or source.startswith(prefix + "/") for prefix in allowed), (
                dockerfile,
                source,
            )
            assert (REPO / source).exists(), (dockerfile, source)


def instructions(image: str) -> list[tuple[str, str]]:
    text = (REPO / "images" / image / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


@pytest.mark.parametrize("image", sorted(IMAGE_LOCKS))
def test_base_images_are_pinned_and_the_final_stage_runs_as_non_root(image: str) -> None:
    for keyword, rest in instructions(image):
        if keyword == "FROM":
            base = rest.split()[0]
            assert re.search(r":\d+\.\d+\.\d+", base) or "@sha256:" in base, base
    users = [rest for keyword, rest in instructions(image) if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), image


@pytest.mark.parametrize("image", sorted(IMAGE_LOCKS))
def test_the_entrypoint_is_the_qmo_subcommand_the_image_is_for(image: str) -> None:
    [entrypoint] = [json.loads(rest) for keyword, rest in instructions(image) if keyword == "ENTRYPOINT"]
    assert entrypoint == (["qmo", "run"] if image == "operator" else ["qmo", "quantize"])
    assert entrypoint[1] in SUBCOMMANDS
