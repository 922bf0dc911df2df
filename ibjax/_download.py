"""Downloads a data set's original files, verified against the sizes and sha256 sums tfds lists.

tfds records, in its own package, where each data set's original files live
and what they must hash to (``tensorflow_datasets/url_checksums/<name>.txt``:
one ``URL  size  sha256  filename`` line per file, tab-separated). Preparing a
data set from them needs TensorFlow; reading them does not. This module reads
that table (:func:`read_url_checksums`, :func:`tfds_url_checksums`) and fetches
the files it lists into a cache directory (:func:`download_files`), so that
ibjax's own readers can load them on a machine without TensorFlow, such as a
Colab TPU runtime.

Nothing unverified is ever left under a file's final name: a file is written to
``<name>.part``, and renamed only when its size and sha256 match the table. An
interrupted download keeps its ``.part``, which the next call resumes (with an
HTTP range request) or starts again. The public entry point is
:func:`ibjax.data.load_dataset` with ``source="tfds"``.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.client
import importlib.util
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["RemoteFile", "DownloadError", "NetworkError", "read_url_checksums", "tfds_url_checksums",
           "unreachable_hosts", "download_files"]

_CHUNK_BYTES = 1 << 20
# Seconds a server gets to answer a request or send the next chunk.
_TIMEOUT_S = 30.0


class DownloadError(ValueError):
    """A download failed in a way a rerun would not fix by itself; the message names the file."""


class NetworkError(DownloadError):
    """The server could not be reached, or the transfer broke off; a rerun resumes."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One original file of a data set, as a tfds ``url_checksums`` line lists it.

    Attributes:
      url: where it is downloaded from.
      size: its size in bytes.
      sha256: the hex digest it must have.
      filename: the name it is kept under in the cache directory.
    """

    url: str
    size: int
    sha256: str
    filename: str


def read_url_checksums(path: str | Path) -> tuple[RemoteFile, ...]:
    """Reads a table in tfds's ``url_checksums`` format.

    Each non-empty line that does not start with ``#`` holds ``URL``, the size
    in bytes and the sha256 hex digest, and optionally the file name,
    separated by tabs; without a file name the URL's last path segment is used.

    Args:
      path: the table's file.

    Returns:
      The files, in the table's order.

    Raises:
      DownloadError: for a missing file or a malformed line (naming the line).
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DownloadError(f"{path}: cannot read the URL checksum table ({e.strerror or e}).") from None
    files = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.strip().split("\t")
        where = f"{path}, line {number}"
        if len(fields) not in (3, 4):
            raise DownloadError(f"{where}: expected 'URL<TAB>size<TAB>sha256[<TAB>filename]'; got {line!r}.")
        url, size, sha256 = fields[:3]
        filename = fields[3] if len(fields) == 4 else Path(urllib.parse.urlsplit(url).path).name
        if not size.isdigit():
            raise DownloadError(f"{where}: the size must be a number of bytes; got {size!r}.")
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
            raise DownloadError(f"{where}: the sha256 must be 64 hex digits; got {sha256!r}.")
        if not filename or Path(filename).name != filename or filename in (".", ".."):
            raise DownloadError(f"{where}: the file name must be a plain name; got {filename!r}.")
        files.append(RemoteFile(url, int(size), sha256.lower(), filename))
    if not files:
        raise DownloadError(f"{path}: the URL checksum table lists no file.")
    return tuple(files)


def tfds_url_checksums(tfds_name: str) -> Path:
    """The ``url_checksums`` table tensorflow-datasets ships for ``tfds_name``, found without importing tfds.

    Raises:
      DownloadError: if tensorflow-datasets is not installed or lists no table for ``tfds_name``.
    """
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise DownloadError("tensorflow-datasets is not installed: it lists the original files' URLs and sha256.")
    for location in spec.submodule_search_locations:
        table = Path(location) / "url_checksums" / f"{tfds_name}.txt"
        if table.is_file():
            return table
    raise DownloadError(f"tensorflow-datasets lists no original files for {tfds_name!r} (no url_checksums/"
                        f"{tfds_name}.txt in {', '.join(spec.submodule_search_locations)}).")


def unreachable_hosts(urls: Iterable[str], timeout: float) -> list[str]:
    """Hosts of ``urls`` that do not answer an HTTP HEAD within ``timeout`` seconds.

    One request per host, through the proxies the environment names.
    """
    url_per_host = {urllib.parse.urlsplit(url).hostname: url for url in urls}
    unreachable = []
    for host, url in url_per_host.items():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # The server answered: the host is reachable, whatever the status.
        except (OSError, http.client.HTTPException):
            unreachable.append(host)
    return unreachable


def download_files(files: Sequence[RemoteFile], directory: str | Path, *, what: str = "data set",
                   progress: bool = True, timeout: float = _TIMEOUT_S) -> dict[str, Path]:
    """Fetches ``files`` into ``directory``, verified; files already there and intact are kept.

    Once the hosts are known to answer, and before anything is fetched, one
    line on stderr says what is fetched, from where, how much and where it is
    kept; a tqdm bar shows each file's progress. Each file is written to ``<filename>.part`` and renamed to
    ``<filename>`` only once its size and sha256 match; a ``.part`` left by an
    interrupted call is resumed.

    Args:
      files: the files, e.g. :func:`read_url_checksums` of a table.
      directory: the cache directory; created if absent.
      what: what the files are, for the line that announces the download.
      progress: show a progress bar per file.
      timeout: seconds a server gets to answer and to send each chunk.

    Returns:
      ``{filename: path}`` of every file, all verified.

    Raises:
      NetworkError: a host cannot be reached or a transfer broke off (its
        ``.part`` is kept, so a rerun resumes).
      DownloadError: a size or sha256 mismatch (the file is removed; the
        message names the expected and found values), an HTTP error status,
        or a cache directory that cannot be written (read-only, full).
    """
    directory = Path(directory)
    paths = {f.filename: directory / f.filename for f in files}
    missing = []
    for f in files:
        if paths[f.filename].is_file():
            try:
                _verify(paths[f.filename], f)
                continue
            except DownloadError as e:
                print(f"ibjax: {e} Downloading it again.", file=sys.stderr, flush=True)
        missing.append(f)
    if not missing:
        return paths
    unreachable = unreachable_hosts([f.url for f in missing], min(timeout, 5.0))
    if unreachable:
        raise NetworkError(f"no network: cannot reach {', '.join(unreachable)}")
    _make_writable(directory)
    hosts = sorted({urllib.parse.urlsplit(f.url).netloc for f in missing})
    print(f"ibjax: downloading {len(missing)} original file(s) of {what} "
          f"({_megabytes(sum(f.size for f in missing))}) from {', '.join(hosts)} into {directory}",
          file=sys.stderr, flush=True)
    for f in missing:
        _fetch(f, paths[f.filename], progress=progress, timeout=timeout)
    return paths


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _make_writable(directory: Path) -> None:
    """Creates ``directory``, or raises a :class:`DownloadError` naming it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{directory}: cannot create the download cache ({e.strerror or e}); "
                            "set TFDS_DATA_DIR to a writable directory.") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DownloadError(f"{directory}: the download cache is not writable; "
                            "set TFDS_DATA_DIR to a writable directory.")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, f: RemoteFile) -> None:
    """Raises a :class:`DownloadError` if ``path``'s size or sha256 is not ``f``'s."""
    size = path.stat().st_size
    if size != f.size:
        raise DownloadError(f"{path}: {size} bytes where the table lists {f.size} for {f.url}.")
    found = _sha256(path)
    if found != f.sha256:
        raise DownloadError(f"{path}: sha256 {found} where the table lists {f.sha256} for {f.url}.")


def _fetch(f: RemoteFile, path: Path, *, progress: bool, timeout: float) -> None:
    """Downloads one file to ``path.part``, resuming what is there, then verifies and renames it."""
    from tqdm.auto import tqdm

    part = path.with_name(path.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    if have > f.size:
        part.unlink()
        have = 0
    request = urllib.request.Request(f.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if have and response.status != 206:  # The server ignored the range: start again.
                have = 0
            with open(part, "ab" if have else "wb") as out, \
                    tqdm(total=f.size, initial=have, unit="B", unit_scale=True, desc=f.filename,
                         disable=not progress, leave=False) as bar:
                while have < f.size:
                    chunk = response.read(min(_CHUNK_BYTES, f.size - have))
                    if not chunk:
                        break
                    out.write(chunk)
                    have += len(chunk)
                    bar.update(len(chunk))
                extra = response.read(1) if have == f.size else b""
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{f.url}: HTTP {e.code} {e.reason}.") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            part.unlink(missing_ok=True)
            raise DownloadError(f"{path.parent}: no space left for {f.filename} ({_megabytes(f.size)}).") from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise DownloadError(f"{path.parent}: cannot write {f.filename} ({e.strerror}); "
                                "set TFDS_DATA_DIR to a writable directory.") from None
        raise NetworkError(f"the download of {f.url} broke off after {have} of {f.size} bytes "
                           f"({e}); a rerun resumes it") from None
    except http.client.HTTPException as e:
        raise NetworkError(f"the download of {f.url} broke off after {have} of {f.size} bytes "
                           f"({type(e).__name__}); a rerun resumes it") from None
    if have < f.size:
        raise NetworkError(f"the download of {f.url} ended after {have} of {f.size} bytes; a rerun resumes it")
    try:
        if extra:
            raise DownloadError(f"{f.url}: the server sent more than the {f.size} bytes the table lists.")
        _verify(part, f)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, path)
