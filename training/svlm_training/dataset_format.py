"""The training dataset on disk: one Arrow IPC stream of seconds plus a JSON manifest.

Layout of a dataset directory::

    manifest.json     what went in (bags, topics, stamps, settings) and what came out (counts)
    seconds.arrow     one row per narrated second, episodes (bags) one after the other

Columns of ``seconds.arrow``:

    episode   int32        index into manifest["sources"] (one bag = one stream = one episode)
    second    int32        period number since the stream began (gaps skip numbers)
    start     float64      stream time (s) of the period's start
    end       float64      stream time (s) of its end
    text      string       the words said in that second, '' when silent
    received  int32        distinct frames sampled in the period
    height    int32        frame height after resizing to the pixel budget
    width     int32        frame width
    frames    large_binary fps * period frames, uint8 RGB, (frames, height, width, 3) C order
    question  string       a question asked in that second ('' for none; ``--question-topic``)
    answer    string       its answer, which the narrator says first ('' with no question)

Datasets written before the question columns existed read as having no questions.

Why this format: a second is the unit everything else is cut from (chunks are runs of
consecutive rows of one episode), so the table is flat and needs no index beside it. Arrow IPC
is memory-mapped without parsing or copying (``np.frombuffer`` on a row's ``frames`` is a view
of the page cache), so many DDP ranks on a node share one copy of the data, and it is the very
file format of Hugging Face ``datasets`` (``datasets.Dataset.from_file`` opens it as it is).
Frames are stored already resized to the engine's pixel budget and uncompressed: the training
loop then only patchifies, and nothing lossy happens twice; at 640x360 (4 x 28-pixel tokens of
364 x 644) that is about 1.4 MB per second of bag at 2 fps.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "svlm-seconds"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SECONDS_FILE = "seconds.arrow"
#: Rows per Arrow record batch: large enough to amortise batch headers, small enough that the
#: writer holds only a few seconds of frames in memory.
ROWS_PER_BATCH = 32


def _schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("episode", pa.int32()),
            ("second", pa.int32()),
            ("start", pa.float64()),
            ("end", pa.float64()),
            ("text", pa.string()),
            ("received", pa.int32()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("frames", pa.large_binary()),
            ("question", pa.string()),
            ("answer", pa.string()),
        ]
    )


class DatasetWriter:
    """Writes a dataset under a temporary name and renames it into place only when complete.

    A crash, an error or Ctrl-C leaves at most a ``.<name>.incomplete-<pid>`` directory,
    never something that looks like a finished dataset. Use as a context manager; call
    ``commit(manifest)`` at the end of a successful build.

    Args:
        out: The dataset directory to create.
        overwrite: Replace an existing dataset at ``out`` (only once the new one is complete).

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(f"{self.out} exists; pass --overwrite to replace it")
        self.overwrite = overwrite
        self.tmp = self.out.parent / f".{self.out.name}.incomplete-{os.getpid()}"
        self.rows = 0
        self.bytes_written = 0
        self._writer = None
        self._sink = None
        self._pending: list[dict[str, Any]] = []
        self._committed = False

    def __enter__(self) -> DatasetWriter:
        import pyarrow as pa

        self.out.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self._sink = pa.OSFile(str(self.tmp / SECONDS_FILE), "wb")
        self._writer = pa.ipc.new_stream(self._sink, _schema())
        return self

    def add(self, *, episode: int, second: int, start: float, end: float, text: str,
            received: int, frames: list[np.ndarray], question: str = "",
            answer: str = "") -> None:
        """Append one second; its frames must all have one size (uint8 RGB). A question
        needs its answer."""
        if bool(question.strip()) != bool(answer.strip()):
            raise ValueError(f"a question needs its answer (question {question!r}, answer "
                             f"{answer!r})")
        shapes = {frame.shape for frame in frames}
        if len(shapes) != 1:
            raise ValueError(f"frames of one second differ in size: {sorted(shapes)}")
        height, width, channels = frames[0].shape
        if channels != 3 or frames[0].dtype != np.uint8:
            raise ValueError("frames must be uint8 RGB (height, width, 3)")
        data = np.ascontiguousarray(np.stack(frames)).tobytes()
        self._pending.append(
            {"episode": episode, "second": second, "start": start, "end": end, "text": text,
             "received": received, "height": height, "width": width, "frames": data,
             "question": question.strip(), "answer": answer.strip()}
        )
        self.rows += 1
        self.bytes_written += len(data)
        if len(self._pending) >= ROWS_PER_BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._pending:
            return
        batch = pa.RecordBatch.from_pylist(self._pending, schema=_schema())
        self._writer.write_batch(batch)
        self._pending = []

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Finish the files, write the manifest and move the dataset into place."""
        self._flush()
        self._writer.close()
        self._sink.close()
        self._writer = None
        manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **manifest}
        (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if self.out.exists():
            # Replace only now that the new dataset is whole; the old one goes last.
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}-{time.time_ns()}"
            self.out.rename(old)
            self.tmp.rename(self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out)
        self._committed = True
        return self.out

    def __exit__(self, *exc_info) -> None:
        if self._committed:
            return
        # Failed or interrupted: remove every trace of the half-written dataset.
        try:
            if self._writer is not None:
                self._writer.close()
            if self._sink is not None:
                self._sink.close()
        except Exception:  # noqa: BLE001 - already failing; the directory goes anyway
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass(frozen=True)
class Second:
    """One row of a dataset, with its frames as a zero-copy view of the mapped file."""

    episode: int
    second: int
    start: float
    end: float
    text: str
    received: int
    frames: np.ndarray  # (frames, height, width, 3) uint8, read-only
    question: str = ""
    answer: str = ""

    @property
    def silent(self) -> bool:
        return not self.text


class SecondsDataset:
    """A dataset directory opened for reading (memory-mapped).

    Raises:
        ValueError: not a dataset directory, or one of another format version.
    """

    def __init__(self, path: str | Path):
        import pyarrow as pa

        self.path = Path(path)
        manifest_file = self.path / MANIFEST
        if not manifest_file.is_file() or not (self.path / SECONDS_FILE).is_file():
            raise ValueError(
                f"{self.path} is not a dataset (no {MANIFEST} and {SECONDS_FILE}); build one "
                "with svlm-bag2dataset"
            )
        self.manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT_NAME or self.manifest.get("version") != 1:
            raise ValueError(
                f"{self.path}: unsupported dataset format {self.manifest.get('format')!r} "
                f"version {self.manifest.get('version')!r}; expected {FORMAT_NAME} 1"
            )
        source = pa.memory_map(str(self.path / SECONDS_FILE), "r")
        self.table = pa.ipc.open_stream(source).read_all()
        columns = ("episode", "second", "start", "end", "received", "height", "width")
        self._numbers = {name: self.table.column(name).to_numpy() for name in columns}
        self._text = self.table.column("text").to_pylist()
        names = self.table.schema.names
        self._questions = (self.table.column("question").to_pylist() if "question" in names
                           else [""] * self.table.num_rows)
        self._answers = (self.table.column("answer").to_pylist() if "answer" in names
                         else [""] * self.table.num_rows)
        # Where each row's frame bytes sit inside the mapped file: (data buffer, start, end).
        # Slicing the column's data buffer is zero-copy; a scalar's as_buffer() would copy.
        self._frame_slices: list[tuple[object, int, int]] = []
        for chunk in self.table.column("frames").chunks:
            _, offsets, data = chunk.buffers()
            bounds = np.frombuffer(offsets, dtype=np.int64)[chunk.offset:
                                                            chunk.offset + len(chunk) + 1]
            self._frame_slices.extend(
                (data, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
            )

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, row: int) -> Second:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for {len(self)} seconds")
        n = self._numbers
        height, width = int(n["height"][row]), int(n["width"][row])
        data, start, end = self._frame_slices[row]
        buffer = data.slice(start, end - start)  # a view of the mapped file, no copy
        frames = np.frombuffer(buffer, dtype=np.uint8).reshape(-1, height, width, 3)
        return Second(
            episode=int(n["episode"][row]),
            second=int(n["second"][row]),
            start=float(n["start"][row]),
            end=float(n["end"][row]),
            text=self._text[row],
            received=int(n["received"][row]),
            frames=frames,
            question=self._questions[row],
            answer=self._answers[row],
        )

    def texts(self, rows: range) -> list[str]:
        """The text of ``rows`` without touching their frames."""
        return [self._text[row] for row in rows]

    def history(self, rows: range) -> list[str | tuple[str, str]]:
        """What ``rows`` said, for the previous text: their words, or ``(words, answer)``
        for a second that answered a question."""
        return [(self._text[row], self._answers[row]) if self._answers[row] else self._text[row]
                for row in rows]

    def episodes(self) -> list[range]:
        """The row range of each episode, in order (rows of an episode are contiguous)."""
        episode = self._numbers["episode"]
        if len(episode) == 0:
            return []
        cuts = np.flatnonzero(np.diff(episode)) + 1
        bounds = [0, *cuts.tolist(), len(episode)]
        return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @property
    def fps(self) -> float:
        return float(self.manifest["fps"])

    @property
    def period(self) -> float:
        return float(self.manifest["period"])
