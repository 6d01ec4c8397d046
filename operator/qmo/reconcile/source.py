"""Resolve a Hugging Face source: revision -> commit sha, and read its ``config.json``.

Only two small requests against the hub's public HTTP API (what huggingface_hub itself calls), so the
operator needs no writable cache directory. ``HF_ENDPOINT`` points it at a mirror (or, in tests, at a
local stand-in). The token is sent as a header and never logged.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

_SHA = re.compile(r"^[0-9a-f]{40}$")


class SourceError(Exception):
    """The source cannot be read. ``permanent`` errors need a spec or Secret change; others are retried."""

    def __init__(self, message: str, *, reason: str, permanent: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.permanent = permanent


@dataclass(frozen=True)
class ResolvedModel:
    revision: str
    config: dict[str, Any]


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


class HubClient:
    """Reads model metadata from the hub; config.json of a commit never changes, so it is cached."""

    def __init__(self, *, endpoint: str | None = None, timeout: float = 20.0) -> None:
        self._endpoint = endpoint or hub_endpoint()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._configs: dict[tuple[str, str], dict[str, Any]] = {}

    async def _get_json(self, url: str, token: str | None, what: str) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.get(url, headers=headers) as response,
            ):
                if response.status in (401, 403):
                    raise SourceError(
                        f"access to {what} was refused ({response.status}): the model is gated or private;"
                        " set spec.source.huggingface.tokenSecretRef to a Secret with a token that can read it",
                        reason="SourceUnauthorized",
                        permanent=True,
                    )
                if response.status == 404:
                    raise SourceError(
                        f"{what} was not found on {self._endpoint}",
                        reason="SourceNotFound",
                        permanent=True,
                    )
                if response.status >= 400:
                    raise SourceError(
                        f"reading {what} failed: HTTP {response.status}",
                        reason="SourceUnavailable",
                        permanent=False,
                    )
                return json.loads(await response.text())
        except (TimeoutError, aiohttp.ClientError) as error:
            raise SourceError(
                f"cannot reach {self._endpoint} for {what}: {type(error).__name__}",
                reason="SourceUnavailable",
                permanent=False,
            ) from error
        except json.JSONDecodeError as error:
            raise SourceError(
                f"{what} is not valid JSON: {error}", reason="InvalidModelConfig", permanent=True
            ) from error

    async def resolve(self, repo: str, revision: str, token: str | None) -> str:
        """The commit sha a branch or tag points to now (a sha resolves to itself without a request)."""
        if _SHA.match(revision):
            return revision
        url = f"{self._endpoint}/api/models/{repo}/revision/{quote(revision, safe='')}"
        info = await self._get_json(url, token, f"revision {revision!r} of {repo}")
        sha = info.get("sha") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise SourceError(
                f"the hub returned no commit for {repo}@{revision}", reason="SourceNotFound", permanent=True
            )
        return sha

    async def config(self, repo: str, sha: str, token: str | None) -> dict[str, Any]:
        cached = self._configs.get((repo, sha))
        if cached is not None:
            return cached
        url = f"{self._endpoint}/{repo}/resolve/{sha}/config.json"
        config = await self._get_json(url, token, f"config.json of {repo}@{sha[:12]}")
        if not isinstance(config, dict):
            raise SourceError(
                f"config.json of {repo} is not a JSON object", reason="InvalidModelConfig", permanent=True
            )
        self._configs[(repo, sha)] = config
        return config
