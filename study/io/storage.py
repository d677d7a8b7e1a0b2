"""Files of a study directory that may be local or on object storage, through ``pyarrow.fs``.

A *location* is a local path (``str`` or :class:`~pathlib.Path`) or a URI with a
scheme (``s3://bucket/prefix``, ``gs://...``, ``file:///abs/path``). URIs go
through :meth:`pyarrow.fs.FileSystem.from_uri` (pyarrow ships with Ray, which
uses it for the same URIs); plain paths through pyarrow's local filesystem.
Any URI with a scheme counts as *remote* (:func:`is_uri`), ``file://`` included:
it takes exactly the code path ``s3://`` takes, which is how the tests exercise
that path without a network.

What "atomic" means here:

* :func:`write_text` on a filesystem that can rename (local disk, ``file://``)
  writes a temporary sibling and renames it onto the target; on an object store
  it is one PUT, which S3 and GCS make visible all at once or not at all.
* :func:`upload_tree` uploads the files named in ``last`` after every other file
  has been uploaded: a reader that takes the presence of such a file (a phase
  artifact's ``record.json``) as "complete" never sees a half-uploaded tree.
* :func:`download_tree` fills a directory the caller is expected to have made
  under a temporary name and to rename into place afterwards.

Filesystems are cached per scheme, host/bucket and query, so that resolving an
``s3://`` URI (which asks S3 for the bucket's region) happens once per process
and bucket, not once per file.
"""

from __future__ import annotations

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Union
from urllib.parse import quote, unquote, urlsplit

from trainables.atomic import atomic_file, atomic_write_text

if TYPE_CHECKING:
    import pyarrow.fs as pafs

Location = Union[str, os.PathLike]

#: A URI: a scheme of two or more characters, then ``://`` (``C:/...`` stays a path).
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
#: A URI that went through ``Path(...)``, which folds ``//`` to ``/``: ``s3:/bucket/x``, ``file:/tmp/x``.
_MANGLED = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)(.*)$", re.DOTALL)
#: Parallel transfers in :func:`upload_tree`, :func:`download_tree` and :func:`read_texts`.
TRANSFER_THREADS = 8

_filesystems: dict[tuple[str, str, str], tuple["pafs.FileSystem", bool]] = {}
_lock = threading.Lock()


def _fs():
    """``pyarrow.fs``, imported on first use: reading a study file or printing ``--help`` needs no pyarrow."""
    import pyarrow.fs

    return pyarrow.fs


def _local_fs() -> "pafs.FileSystem":
    return _fs().LocalFileSystem()


def is_uri(location: Location) -> bool:
    """True for a location with a scheme (``s3://``, ``gs://``, ``file://`` ...): handled as remote."""
    return bool(_URI.match(normalize(location)))


def normalize(location: Location) -> str:
    """``location`` as a string, a URI mangled by ``pathlib`` (``s3:/b/x``) repaired (``s3://b/x``).

    ``Path("s3://bucket/x")`` reads ``s3:/bucket/x``; a URI that passed through
    a ``Path`` somewhere is turned back into one instead of becoming a local
    folder named ``s3:``. URIs lose a trailing slash.
    """
    text = os.fspath(location)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    mangled = _MANGLED.match(text)
    if mangled:
        scheme, rest = mangled.groups()
        text = f"{scheme}:///{rest}" if scheme.lower() == "file" else f"{scheme}://{rest}"
    if _URI.match(text):
        parts = urlsplit(text)
        if parts.path not in ("", "/"):
            text = text[: len(text) - len(_after_path(parts))].rstrip("/") + _after_path(parts)
    return text


def _after_path(parts) -> str:
    return (f"?{parts.query}" if parts.query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def join(base: Location, *parts: str) -> str:
    """``base`` with ``parts`` appended: ``/``-joined (and percent-quoted) inside a URI, before its query."""
    base = normalize(base)
    if not _URI.match(base):
        return str(Path(base).joinpath(*parts))
    split = urlsplit(base)
    suffix = _after_path(split)
    head = base[: len(base) - len(suffix)].rstrip("/")
    tail = "/".join(quote(str(p).strip("/"), safe="/-_.~+=:@,") for p in parts if str(p).strip("/"))
    return f"{head}/{tail}{suffix}" if tail else base


def name(location: Location) -> str:
    """The last component of ``location`` (a file or folder name)."""
    location = normalize(location)
    if _URI.match(location):
        return unquote(urlsplit(location).path.rstrip("/").rsplit("/", 1)[-1])
    return Path(location).name


def resolve(location: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of ``location`` and the path in it (cached per scheme, bucket and query)."""
    location = normalize(location)
    if not _URI.match(location):
        return _local_fs(), os.path.abspath(os.path.expanduser(location))
    split = urlsplit(location)
    cache_key = (split.scheme.lower(), split.netloc, split.query)
    ours = unquote(split.path) if cache_key[0] == "file" else split.netloc + unquote(split.path)
    ours = ours.rstrip("/") or ours
    with _lock:
        known = _filesystems.get(cache_key)
    if known is not None:
        filesystem, ours_is_right = known
        if ours_is_right:
            return filesystem, ours
    filesystem, path = _fs().FileSystem.from_uri(location)
    with _lock:
        _filesystems.setdefault(cache_key, (filesystem, path == ours))
    return filesystem, path


#: pyarrow filesystems without real folders: objects are written under any prefix, and making a
#: "folder" leaves an empty marker object behind, so parents are never made there.
OBJECT_STORES = frozenset({"s3", "gcs", "abfs"})


def _can_rename(filesystem: pafs.FileSystem) -> bool:
    return filesystem.type_name == "local"


def _make_parents(filesystem: pafs.FileSystem, paths: Iterable[str]) -> None:
    """Create the parent folders of ``paths`` where the filesystem has folders."""
    if filesystem.type_name in OBJECT_STORES:
        return
    for parent in sorted({path.rsplit("/", 1)[0] for path in paths if "/" in path.strip("/")}):
        filesystem.create_dir(parent, recursive=True)


def _local_path(filesystem: pafs.FileSystem, path: str) -> Path | None:
    """``path`` as a plain local path if ``filesystem`` is the local disk (``file://`` included)."""
    return Path(path) if _can_rename(filesystem) else None


def _is_missing(error: OSError, filesystem: pafs.FileSystem, path: str) -> bool:
    if isinstance(error, FileNotFoundError):
        return True
    try:
        return filesystem.get_file_info(path).type == _fs().FileType.NotFound
    except OSError:
        return False


def read_bytes(location: Location) -> bytes:
    """The content of a file; :class:`FileNotFoundError` if there is none."""
    filesystem, path = resolve(location)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except OSError as err:
        if _is_missing(err, filesystem, path):
            raise FileNotFoundError(f"{normalize(location)} does not exist") from err
        raise


def read_text(location: Location) -> str:
    """The UTF-8 text of a file; :class:`FileNotFoundError` if there is none."""
    return read_bytes(location).decode("utf-8")


def read_texts(locations: Iterable[Location]) -> list[str | None]:
    """The texts of several files, read in parallel (None for a file that has gone), in the order given."""
    locations = list(locations)

    def one(location: Location) -> str | None:
        try:
            return read_text(location)
        except FileNotFoundError:
            return None

    if len(locations) <= 1 or not is_uri(locations[0]):
        return [one(location) for location in locations]
    with ThreadPoolExecutor(max_workers=TRANSFER_THREADS) as pool:
        return list(pool.map(one, locations))


def write_bytes(location: Location, data: bytes) -> None:
    """Write ``data`` to a file (parents created where the filesystem has folders).

    Locally: a temporary sibling renamed into place. Object store: one PUT.
    """
    filesystem, path = resolve(location)
    local = _local_path(filesystem, path)
    if local is not None:
        with atomic_file(local, "wb") as handle:
            handle.write(data)
        return
    _make_parents(filesystem, [path])
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location: Location, text: str) -> None:
    """Write ``text`` (UTF-8) to a file atomically: see :func:`write_bytes`."""
    filesystem, path = resolve(location)
    local = _local_path(filesystem, path)
    if local is not None:
        atomic_write_text(local, text)
        return
    write_bytes(location, text.encode("utf-8"))


def exists(location: Location) -> bool:
    """True if a file or folder (on an object store: any object under the prefix) is there."""
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type != _fs().FileType.NotFound


def is_file(location: Location) -> bool:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type == _fs().FileType.File


def list_files(location: Location, suffix: str = "", recursive: bool = False, hidden: bool = False) -> list[str]:
    """The files under the folder ``location``, as locations of the same kind, sorted; [] if it is missing.

    Names starting with ``.`` (temporary files of :func:`write_text`) are left
    out unless ``hidden``; so are files not ending with ``suffix``.
    """
    filesystem, path = resolve(location)
    base = normalize(location)
    infos = filesystem.get_file_info(_fs().FileSelector(path, allow_not_found=True, recursive=recursive))
    found = []
    root = path.rstrip("/")
    for info in infos:
        if info.type != _fs().FileType.File or not info.path.startswith(root + "/"):
            continue
        relative = info.path[len(root) + 1 :]
        if not relative.endswith(suffix) or (not hidden and any(part.startswith(".") for part in relative.split("/"))):
            continue
        found.append(join(base, *relative.split("/")))
    return sorted(found)


def delete(location: Location) -> None:
    """Remove a file or a whole folder (prefix); nothing if it is not there."""
    filesystem, path = resolve(location)
    kind = filesystem.get_file_info(path).type
    if kind == _fs().FileType.File:
        filesystem.delete_file(path)
    elif kind == _fs().FileType.Directory:
        filesystem.delete_dir(path)


def upload_tree(local_dir: Location, destination: Location, last: Iterable[str] = ()) -> int:
    """Copy the local folder ``local_dir`` to ``destination`` (a folder/prefix); returns the files copied.

    Files whose path relative to ``local_dir`` is in ``last`` are copied only
    once every other file is there, so their presence means the tree is
    complete. Existing files of the same names are overwritten; others at the
    destination are left alone.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise NotADirectoryError(f"{local_dir} is not a folder to upload")
    last = {str(p) for p in last}
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    first = [f for f in files if f not in last]
    final = [f for f in files if f in last]
    filesystem, root = resolve(destination)
    root = root.rstrip("/")
    _make_parents(filesystem, [f"{root}/{relative}" for relative in files])

    def copy(relative: str) -> None:
        target = f"{root}/{relative}"
        _fs().copy_files(str(local_dir / relative), target, source_filesystem=_local_fs(), destination_filesystem=filesystem, use_threads=False)

    _run_all(copy, first)
    _run_all(copy, final)  # only after every other file succeeded
    return len(files)


def download_tree(source: Location, local_dir: Location) -> int:
    """Copy every file under ``source`` (a folder/prefix) into the local folder ``local_dir``; returns the count.

    :class:`FileNotFoundError` if ``source`` holds no file. Download into a
    temporary folder and rename it, so that a half download never looks done.
    """
    filesystem, root = resolve(source)
    infos = filesystem.get_file_info(_fs().FileSelector(root, allow_not_found=True, recursive=True))
    prefix = root.rstrip("/") + "/"
    files = sorted(info.path[len(prefix) :] for info in infos if info.type == _fs().FileType.File and info.path.startswith(prefix))
    if not files:
        raise FileNotFoundError(f"{normalize(source)} holds no files")
    local_dir = Path(local_dir)

    def copy(relative: str) -> None:
        target = local_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        _fs().copy_files(prefix + relative, str(target), source_filesystem=filesystem, destination_filesystem=_local_fs(), use_threads=False)

    _run_all(copy, files)
    return len(files)


def _run_all(function, items: list[str]) -> None:
    """``function`` on every item, in parallel; the first error is raised once all have stopped."""
    if len(items) <= 1:
        for item in items:
            function(item)
        return
    with ThreadPoolExecutor(max_workers=min(TRANSFER_THREADS, len(items))) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            for future in futures:
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
