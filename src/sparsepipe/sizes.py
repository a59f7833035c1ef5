"""Model size on disk and compressed, the "size" columns of every report.

    python -c "from sparsepipe.sizes import file_sizes; print(file_sizes('runs/export/model.onnx'))"

``size_gz_mb`` (gzip level 9) shows what sparsity buys in storage and download time even
when an engine cannot run it faster: zeros compress.
"""

from __future__ import annotations

import gzip
from pathlib import Path

MB = 1024 * 1024


def gzip_size(path: str | Path, level: int = 9, chunk: int = 1 << 20) -> int:
    """Bytes of ``path`` after gzip compression, streamed (nothing written to disk)."""

    class _Counter:
        size = 0

        def write(self, data: bytes) -> int:
            self.size += len(data)
            return len(data)

        def flush(self) -> None:  # gzip calls flush on close
            pass

    counter = _Counter()
    with open(path, "rb") as src, gzip.GzipFile(fileobj=counter, mode="wb", compresslevel=level, mtime=0) as gz:  # type: ignore[arg-type]
        while block := src.read(chunk):
            gz.write(block)
    return counter.size


def file_sizes(path: str | Path) -> dict[str, float]:
    """``size_mb`` and ``size_gz_mb`` of a file, in MiB rounded to 3 decimals."""
    path = Path(path)
    return {
        "size_mb": round(path.stat().st_size / MB, 3),
        "size_gz_mb": round(gzip_size(path) / MB, 3),
    }
