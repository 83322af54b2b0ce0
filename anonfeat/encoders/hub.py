"""Hugging Face Hub model ids as checkpoints: `org/name` or `org/name@revision`.

Resolved through huggingface_hub into its standard cache (HF_HUB_CACHE, else HF_HOME/hub): the
cache first, without any network call; a download only when the files are not cached and the Hub
is not switched off (HF_HUB_OFFLINE=1). Both variables are read at each call, not when
huggingface_hub was imported, so a process (or a test) may set them late.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from anonfeat.errors import AnonfeatError

# Hub repo ids: one namespace, one name (letters, digits, "-", "_", "."), optional @revision.
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_-])(?:@(?P<revision>[\w./-]+))?$")
# Names that are plainly files, never repo ids: a typo in a path should read as a missing file.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar", ".pkl")
# The weight files a model repo may hold, in the order Hugging Face libraries prefer them.
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class HubId:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")


def parse_hub_id(text: str) -> HubId | None:
    """The Hub id `text` names, or None when it is an existing path or not of the form org/name."""
    if Path(text).exists() or text.lower().endswith(_FILE_SUFFIXES):
        return None
    match = _HUB_ID.match(text)
    if match is None or ".." in match["repo"]:
        return None
    return HubId(match["repo"], match["revision"])


def split_revision(text: str) -> tuple[str, str | None]:
    """"org/name@rev" -> ("org/name", "rev"); without "@", the revision is None (main)."""
    repo, _, revision = text.partition("@")
    return repo, revision or None


def _true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) as the environment says now."""
    return _true(os.environ.get("HF_HUB_OFFLINE")) or _true(os.environ.get("TRANSFORMERS_OFFLINE"))


def hub_cache_dir() -> Path:
    """huggingface_hub's cache folder as the environment says now (its documented precedence)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def weights_in(folder: Path) -> Path | None:
    """The weight file of a model folder: a standard name, else its only weight file."""
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    return candidates[0] if len(candidates) == 1 else None


def resolve_hub_id(hub_id: HubId, filename: str | None = None) -> Path:
    """The local snapshot folder holding `hub_id`'s config (if any) and weights (`filename`, else
    the repo's weight file); downloads them when they are not cached and the Hub may be used.
    Raises one clear line otherwise."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    cache = hub_cache_dir()
    try:
        folder = Path(huggingface_hub.snapshot_download(hub_id.repo, revision=hub_id.revision, cache_dir=cache,
                                                        local_files_only=True))
        complete = (folder / filename).is_file() if filename else weights_in(folder) is not None
        if complete:
            return folder
    except (LocalEntryNotFoundError, OSError):
        pass
    if hub_offline():
        raise AnonfeatError(
            f"{hub_id}: not in the Hugging Face cache ({cache}) and the Hub is offline (HF_HUB_OFFLINE=1); "
            f"run once online, or `huggingface-cli download {hub_id.repo}"
            f"{f' --revision {hub_id.revision}' if hub_id.revision else ''}`, or set HF_HUB_OFFLINE=0")
    try:
        files = huggingface_hub.list_repo_files(hub_id.repo, revision=hub_id.revision)
        weights = filename or next((n for n in WEIGHT_NAMES if n in files), None)
        if weights is None:
            others = [n for n in files if "/" not in n and n.endswith(WEIGHT_SUFFIXES)]
            if len(others) != 1:
                raise AnonfeatError(f"{hub_id}: the repository holds no single weight file "
                                    f"({' or '.join(WEIGHT_NAMES)}); found {others or 'none'}")
            weights = others[0]
        if "config.json" in files:
            huggingface_hub.hf_hub_download(hub_id.repo, "config.json", revision=hub_id.revision, cache_dir=cache)
        path = huggingface_hub.hf_hub_download(hub_id.repo, weights, revision=hub_id.revision, cache_dir=cache)
        return Path(path).parent
    except AnonfeatError:
        raise
    except RepositoryNotFoundError:
        raise AnonfeatError(f"{hub_id}: no such model on the Hugging Face Hub (or it is private/gated: "
                            "run `huggingface-cli login`); for a local file, check the path") from None
    except RevisionNotFoundError:
        raise AnonfeatError(f"{hub_id}: the repository has no revision {hub_id.revision!r}") from None
    except Exception as exc:  # noqa: BLE001 - connection errors (httpx), missing files, full disks
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise AnonfeatError(f"{hub_id}: cannot download from the Hugging Face Hub ({first}); check the "
                            "connection, or run `huggingface-cli download` where the Hub is reachable") from None
