"""Arrays in `.npy` files and `.npz` members, read a few rows at a time.

A calibration source can be far larger than memory, so nothing here loads a whole array: raw data
(a `.npy` file, or an `.npz` member stored without compression) is read with positioned reads at its
byte offset, and a compressed member is inflated as a forward stream. Neither memory-maps the file, so
the pages read do not stay in the process's resident set either.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

import numpy as np

from modelport.errors import BadInput

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then file name and extra field lengths at 26 and 28


def _read_header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except (ValueError, OSError) as exc:
        raise BadInput(f"{where} is not a readable NumPy array: {exc}") from exc
    if dtype.hasobject:
        raise BadInput(f"{where} holds Python objects (dtype {dtype}); calibration data must be numeric arrays.",
                       hint="Save numeric arrays, e.g. np.save(path, np.asarray(x, dtype=np.float32)).")
    return tuple(int(d) for d in shape), bool(fortran), dtype


class DiskArray(ABC):
    """An array on disk: its dtype and shape, and `read(start, stop)` for rows along the first axis.

    An `.npz` member (`member` set) is checked against its CRC-32 before its first read: raw reads at an
    offset bypass zipfile's check, and a compressed stream checks it only at its end, which a sample of
    the rows never reaches, so a damaged archive would otherwise be read (and fingerprinted) as data.
    """

    def __init__(self, path: Path, member: str | None, where: str, shape: tuple[int, ...], dtype: np.dtype,
                 fortran: bool) -> None:
        self.path = path
        self.member = member
        self.where = where
        self.shape = shape
        self.dtype = dtype
        self.fortran = fortran
        self._crc_checked = member is None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def _row_items(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64))

    @abstractmethod
    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows `start:stop` (the whole array for a scalar) as a fresh in-memory array."""

    def _check_crc(self) -> None:
        """Stream the member once to its end, where zipfile compares its CRC-32 (memory stays flat)."""
        if self._crc_checked:
            return
        try:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as f:
                while f.read(1 << 20):
                    pass
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
            raise BadInput(f"{self.where} is damaged: {exc}",
                           hint="Write the file again (numpy.savez) or copy it again from a good source.") from exc
        self._crc_checked = True


class StoredArray(DiskArray):
    """Raw array bytes at a known offset in a file: each read is one seek and one read of just those rows."""

    def __init__(self, path: Path, member: str | None, offset: int, where: str, shape: tuple[int, ...],
                 dtype: np.dtype, fortran: bool) -> None:
        super().__init__(path, member, where, shape, dtype, fortran)
        self.offset = offset

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        self._check_crc()
        if not self.shape:
            return self._read_items(0, 1).reshape(())
        stop = len(self) if stop is None else stop
        if self.fortran:  # rows are not contiguous: read the whole (rare, small) array
            whole = self._read_items(0, int(np.prod(self.shape))).reshape(self.shape, order="F")
            return np.ascontiguousarray(whole[start:stop])
        row = self._row_items
        return self._read_items(start * row, (stop - start) * row).reshape((stop - start, *self.shape[1:]))

    def _read_items(self, first: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=self.dtype)
        with open(self.path, "rb") as f:
            f.seek(self.offset + first * self.dtype.itemsize)
            got = f.readinto(out.view(np.uint8)) if out.nbytes else 0
        if got != out.nbytes:
            raise BadInput(f"{self.where} is truncated: expected {out.nbytes} bytes at offset "
                           f"{self.offset + first * self.dtype.itemsize}, read {got}.")
        return out


class DeflatedArray(DiskArray):
    """A compressed `.npz` member: inflated as a forward stream, so reads in increasing order cost one pass.

    The open stream is dropped when pickled or forked, and closed once its last row is read, so a
    directory of many compressed files does not hold many file handles.
    """

    def __init__(self, path: Path, member: str, where: str, shape: tuple[int, ...], dtype: np.dtype,
                 fortran: bool, data_start: int) -> None:
        super().__init__(path, member, where, shape, dtype, fortran)
        self.data_start = data_start
        self._stream: tuple[int, zipfile.ZipFile, IO[bytes]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None}

    def _open(self) -> IO[bytes]:
        if self._stream is None or self._stream[0] != os.getpid():
            archive = zipfile.ZipFile(self.path)
            self._stream = (os.getpid(), archive, archive.open(self.member))
        return self._stream[2]

    def close(self) -> None:
        if self._stream is not None and self._stream[0] == os.getpid():
            self._stream[2].close()
            self._stream[1].close()
        self._stream = None

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        self._check_crc()
        if self.fortran or not self.shape:
            with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as f:
                whole = np.lib.format.read_array(f)
            return whole if not self.shape else np.ascontiguousarray(whole[start:stop])
        stop = len(self) if stop is None else stop
        row_bytes = self._row_items * self.dtype.itemsize
        stream = self._open()
        try:
            stream.seek(self.data_start + start * row_bytes)  # forward: inflate and discard; backward: restart
            data = stream.read((stop - start) * row_bytes)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            self.close()
            raise BadInput(f"{self.where} cannot be read: {exc}") from exc
        if len(data) != (stop - start) * row_bytes:
            self.close()
            raise BadInput(f"{self.where} is truncated.")
        if stop == len(self):
            self.close()
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[1:])).copy()


def open_npy(path: Path) -> StoredArray:
    """The array in a `.npy` file, header parsed, data left on disk."""
    with open(path, "rb") as f:
        shape, fortran, dtype = _read_header(f, str(path))
        offset = f.tell()
    return StoredArray(path, None, offset, str(path), shape, dtype, fortran)


def open_npz(path: Path) -> dict[str, DiskArray]:
    """The arrays in an `.npz` archive keyed by name, headers parsed, data left on disk."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BadInput(f"{str(path)!r} is not a readable .npz archive: {exc}",
                       hint="Write it with numpy.savez or numpy.savez_compressed.") from exc
    arrays: dict[str, DiskArray] = {}
    with archive, open(path, "rb") as raw:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            where = f"{path}[{name}]"
            if info.compress_type == zipfile.ZIP_STORED:
                raw.seek(info.header_offset)
                signature, name_len, extra_len = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
                if signature != b"PK\x03\x04":
                    raise BadInput(f"{where}: corrupt zip entry header.")
                raw.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
                shape, fortran, dtype = _read_header(raw, where)
                arrays[name] = StoredArray(path, info.filename, raw.tell(), where, shape, dtype, fortran)
            else:
                with archive.open(info) as member:
                    shape, fortran, dtype = _read_header(member, where)
                    start = member.tell()
                arrays[name] = DeflatedArray(path, info.filename, where, shape, dtype, fortran, start)
    return arrays
