"""One quick look at the Hub before ``datasets.load_dataset`` reads a dataset id from it.

``load_dataset`` retries an unreachable Hub for about half a minute (five retries with
back-off) before it fails, and a mistyped id costs the same on a machine without network.
:func:`check_hub_dataset` asks the Hub about the id once, with a short timeout, and turns each
way that can fail into a :class:`DataError` that says what to do:

- the Hub cannot be reached (no network, a wrong ``HF_ENDPOINT``): check the path if a local
  file was meant; set ``HF_HUB_OFFLINE=1`` to read a copy from the ``datasets`` cache;
- no such dataset (or a private one without a token); a gated one;
- offline mode (``HF_HUB_OFFLINE=1``): nothing is asked, ``datasets`` reads its cache and fails
  at once when the id is not there (:func:`offline_hint` words that error).
"""

from __future__ import annotations

import os

from align.data.errors import DataError

PROBE_TIMEOUT_S = 5.0


def _endpoint() -> str:
    """``HF_ENDPOINT`` as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or constants.ENDPOINT


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) is set: the Hub is not asked."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def offline_hint(name: str) -> str:
    """What to do when ``name`` is not in the cache and offline mode is on."""
    cache = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return (
        f"{name}: not a local file or folder, and not in the datasets cache ({cache}) while HF_HUB_OFFLINE is set; "
        "check the path, or load it once with network access (or unset HF_HUB_OFFLINE)"
    )


def check_hub_dataset(name: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`DataError` within about ``timeout_s`` when the Hub cannot serve dataset ``name``."""
    if hub_offline():
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, HFValidationError, RepositoryNotFoundError

    endpoint = _endpoint()
    try:
        HfApi(endpoint=endpoint).dataset_info(name, timeout=timeout_s)
    except HFValidationError as e:
        raise DataError(f"{name}: not a local file or folder, nor a Hub dataset id ({e}); check the path") from None
    except GatedRepoError:
        raise DataError(f"{name}: a gated dataset on the Hub ({endpoint}); accept its terms on its Hub page and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise DataError(
            f"{name}: not a local file or folder, and no dataset of that id on the Hub ({endpoint}); "
            "check the path or the id (a private dataset needs a login: hf auth login)"
        ) from None
    except HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{name}: the Hub ({endpoint}) refused the dataset: {first}") from None
    except Exception as e:  # noqa: BLE001 - httpx/socket errors of many kinds: all mean "unreachable"
        raise DataError(
            f"{name}: not a local file or folder, and the Hub ({endpoint}) could not be reached within {timeout_s:g}s "
            f"({type(e).__name__}: {e}); check the path if you meant a local file, "
            "or set HF_HUB_OFFLINE=1 to read a copy already in the datasets cache"
        ) from None
