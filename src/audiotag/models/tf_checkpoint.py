"""Read a TensorFlow checkpoint without TF: TensorBundle (V2: ``<prefix>.index`` + ``<prefix>.data-*``)
or the old V1 format (one file, e.g. VGGish's ``vggish_model.ckpt``).

The ``.index`` is a LevelDB-style table (TF's ``lib/io/table``): data blocks of prefix-compressed
entries (varint shared/non-shared/value lengths, a restart array at the end), each block followed
by a 5-byte trailer (compression type, masked CRC32C of block + type), an index block mapping the
last key of each data block to its handle (varint offset, size), and a 48-byte footer (metaindex
and index handles, magic ``0xdb4775248b80fb57``). Keys are variable names, sorted; the empty key
holds the ``BundleHeaderProto`` (num_shards, endianness), every other value a ``BundleEntryProto``
(dtype, shape, shard_id, offset, size, masked crc32c), decoded here from the protobuf wire format.
Each tensor's bytes are checked against its CRC32C (numpy-vectorised, ~0.1 s for 10 MB).

V1 (``tf.compat.v1.train.Saver(write_version=V1)``, TF's ``util/tensor_slice_writer``) is the same
table in one file, with other values: under the empty key a ``SavedTensorSlices`` whose ``meta``
(field 1) lists every tensor (``SavedSliceMeta``: name 1, shape 2, dtype 3, slices 4), and under
each tensor's key (its name and slice, order-encoded) a ``SavedTensorSlices`` whose ``data``
(field 2, ``SavedSlice``: name 1, slice 2, TensorProto 3) holds the values inline, as the
TensorProto's typed repeated fields (``float_val`` packed, ...). The block CRCs are its checksums.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audiotag.core.errors import DataError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
# TensorFlow's DataType enum (types.proto) -> numpy dtype, for the numeric types
DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    17: np.uint16,
    19: np.float16,
    22: np.uint32,
    23: np.uint64,
}
DT_STRING = 7

# ----------------------------------------------------------------------------- CRC32C (Castagnoli)

_POLY = 0x82F63B78
_TABLE = np.zeros(256, dtype=np.uint32)
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ (_POLY if _c & 1 else 0)
    _TABLE[_i] = _c
_LANE = 1024  # bytes per lane of the vectorised CRC


def _raw_lanes(lanes: np.ndarray, start: np.ndarray) -> np.ndarray:
    """The CRC register after feeding each row of ``lanes`` (uint8, rows x cols) from ``start``."""
    reg = start.astype(np.uint32)
    columns = np.ascontiguousarray(lanes.T)  # one contiguous row per step
    index = np.empty_like(reg)
    for column in columns:
        np.bitwise_xor(reg, column, out=index)
        np.bitwise_and(index, 0xFF, out=index)
        reg >>= 8
        reg ^= _TABLE.take(index)
    return reg


def _zero_shift_tables() -> np.ndarray:
    """(4, 256): the register map of ``_LANE`` zero bytes, one table per register byte (it is linear)."""
    starts = (
        np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32)[:, None])
    ).ravel()
    return _raw_lanes(np.zeros((starts.size, _LANE), np.uint8), starts).reshape(4, 256)


_S0, _S1, _S2, _S3 = _zero_shift_tables().tolist()


def _shift(reg: int) -> int:
    return _S0[reg & 0xFF] ^ _S1[(reg >> 8) & 0xFF] ^ _S2[(reg >> 16) & 0xFF] ^ _S3[reg >> 24]


def crc32c_many(buffers: list[bytes]) -> list[int]:
    """CRC32C of each buffer: every buffer cut into 1024-byte lanes, all lanes computed side by side
    (one pass of 1024 numpy steps), then each buffer's lanes joined (CRC is linear over GF(2))."""
    arrays = [np.frombuffer(b, dtype=np.uint8) for b in buffers]
    # leading zeros leave a register that starts at 0 unchanged: pad each buffer at the front
    padded = [np.concatenate([np.zeros(-a.size % _LANE, np.uint8), a]) for a in arrays]
    lanes = np.concatenate(padded).reshape(-1, _LANE) if padded else np.zeros((0, _LANE), np.uint8)
    raw = _raw_lanes(lanes, np.zeros(lanes.shape[0], np.uint32)).tolist()
    out, first = [], 0
    for a, p in zip(arrays, padded, strict=True):
        reg = 0
        for part in raw[first : first + p.size // _LANE]:
            reg = _shift(reg) ^ part
        first += p.size // _LANE
        init = 0xFFFFFFFF  # the initial register, carried through the buffer: whole lanes, then the rest
        for _ in range(a.size // _LANE):
            init = _shift(init)
        init = int(_raw_lanes(np.zeros((1, a.size % _LANE), np.uint8), np.array([init]))[0])
        out.append(reg ^ init ^ 0xFFFFFFFF)
    return out


def crc32c(data: bytes) -> int:
    return crc32c_many([data])[0]


def unmask(masked: int) -> int:
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ----------------------------------------------------------------------------- wire format


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """A protobuf message's (field number, value): varints as ints, fixed32/64 and bytes as bytes."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((number, value))
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            out.append((number, buf[pos : pos + width]))
            pos += width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            out.append((number, buf[pos : pos + length]))
            pos += length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != len(buf):
        raise ValueError("truncated protobuf message")
    return out


def _entry(value: bytes) -> dict:
    """A BundleEntryProto: dtype 1, shape 2 (TensorShapeProto: dim 2 {size 1}), shard 3, offset 4,
    size 5, crc32c 6 (fixed32), slices 7."""
    entry = {"dtype": 0, "shape": [], "shard": 0, "offset": 0, "size": 0, "crc": None, "sliced": False}
    for number, v in _fields(value):
        if number == 1:
            entry["dtype"] = v
        elif number == 2:
            dims = [d for n, d in _fields(v) if n == 2]  # type: ignore[arg-type]
            entry["shape"] = [next((s for n, s in _fields(d) if n == 1), 0) for d in dims]  # type: ignore[arg-type]
        elif number in (3, 4, 5):
            entry[{3: "shard", 4: "offset", 5: "size"}[number]] = v
        elif number == 6:
            entry["crc"] = int.from_bytes(v, "little")  # type: ignore[arg-type]
        elif number == 7:
            entry["sliced"] = True
    return entry


# ----------------------------------------------------------------------------- table


def _block(data: bytes, offset: int, size: int, path: Path) -> bytes:
    if offset + size + 5 > len(data):
        raise ValueError(f"block at {offset} (+{size}) runs past the end of the file")
    contents, kind = data[offset : offset + size], data[offset + size]
    stored = int.from_bytes(data[offset + size + 1 : offset + size + 5], "little")
    if crc32c(contents + bytes([kind])) != unmask(stored):
        raise ValueError(f"block at byte {offset}: CRC32C mismatch")
    if kind != 0:
        raise DataError(
            f"{path}: block at byte {offset} is compressed (type {kind}); only uncompressed tables are read"
        )
    return contents


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    n_restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * n_restarts
    if end < 0:
        raise ValueError("bad restart array")
    out, key, pos = [], b"", 0
    while pos < end:
        shared, pos = _varint(block, pos)
        fresh, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + fresh]
        pos += fresh
        out.append((key, block[pos : pos + length]))
        pos += length
    return out


def _table(path: Path) -> list[tuple[bytes, bytes]]:
    data = path.read_bytes()
    if len(data) < FOOTER_SIZE or int.from_bytes(data[-8:], "little") != TABLE_MAGIC:
        raise ValueError("no table footer (magic number missing): not a TensorFlow checkpoint index")
    footer = data[-FOOTER_SIZE:]
    _, pos = _varint(footer, 0)  # metaindex handle (unused)
    _, pos = _varint(footer, pos)
    index_offset, pos = _varint(footer, pos)
    index_size, pos = _varint(footer, pos)
    entries = []
    for _, handle in _block_entries(_block(data, index_offset, index_size, path)):
        offset, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        entries += _block_entries(_block(data, offset, size, path))
    return entries


def read_checkpoint(index_path: str | Path, slots: bool = False) -> dict[str, np.ndarray]:
    """The numeric variables of the checkpoint whose ``.index`` is ``index_path`` (strings skipped);
    optimizer slots (a variable named under another one: ``<var>/Adam``, ``<var>/Momentum``) only
    with ``slots``: they are 2/3 of a TF1 training checkpoint and inference needs none of them."""
    path = Path(index_path)
    prefix = str(path)[: -len(".index")] if path.name.endswith(".index") else None
    if prefix is None or not path.is_file():
        raise DataError(f"{path}: expected a TensorFlow checkpoint's .index file")
    try:
        table = _table(path)
        if not table or table[0][0] != b"":
            raise ValueError("no BundleHeaderProto (empty key)")
        header = dict(_fields(table[0][1]))
        shards = int(header.get(1, 1))  # type: ignore[arg-type]
        if header.get(2, 0) != 0:
            raise ValueError("big-endian checkpoint")
        entries = {k.decode(): _entry(v) for k, v in table[1:]}
    except ValueError as exc:
        raise DataError(
            f"{path}: not a readable TensorFlow checkpoint index ({exc}); reinstall or re-save it"
        ) from None
    data = {s: _shard(prefix, s, shards) for s in {e["shard"] for e in entries.values()}}
    for name, e in entries.items():  # strings too: a cut file loses its last entry first
        if e["offset"] + e["size"] > len(data[e["shard"]]):
            raise DataError(
                f"{path}: variable {name!r} ends past the end of its data file: the data file is truncated"
            )
    numeric = {
        name: e
        for name, e in entries.items()
        if e["dtype"] != DT_STRING and (slots or name.rpartition("/")[0] not in entries)
    }
    raws = {name: _raw(name, e, data[e["shard"]], path) for name, e in numeric.items()}
    checked = [name for name, e in numeric.items() if e["crc"] is not None]
    for name, crc in zip(checked, crc32c_many([raws[n] for n in checked]), strict=True):
        if crc != unmask(numeric[name]["crc"]):
            raise DataError(
                f"{path}: variable {name!r}: CRC32C mismatch, the data file is corrupted; "
                "reinstall or re-save it"
            )
    return {
        name: np.frombuffer(raws[name], dtype=DTYPES[e["dtype"]]).reshape(e["shape"]).copy()
        for name, e in numeric.items()
    }


def is_index(path: Path) -> bool:
    """A TensorFlow checkpoint's ``.index`` (musicnn's are named just ``.index``: no Path.suffix)."""
    return path.name.endswith(".index")


def data_shards(index_path: Path) -> list[Path]:
    """The ``.data-*`` files beside a checkpoint's ``.index``, which travel with it."""
    prefix = index_path.name[: -len(".index")]
    return sorted(index_path.parent.glob(f"{prefix}.data-*-of-*"))


def _shard(prefix: str, shard: int, shards: int) -> bytes:
    name = Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}")
    if not name.is_file():
        raise DataError(
            f"{name}: the checkpoint's data shard is missing (reinstall or re-save the checkpoint)"
        )
    return name.read_bytes()


def _raw(name: str, e: dict, shard: bytes, path: Path) -> bytes:
    dtype = DTYPES.get(e["dtype"])
    where = f"{path}: variable {name!r}"
    if dtype is None or e["sliced"]:
        raise DataError(f"{where}: dtype {e['dtype']} or a sliced variable, which this reader does not take")
    raw = shard[e["offset"] : e["offset"] + e["size"]]
    count = int(np.prod(e["shape"], dtype=np.int64))
    if len(raw) != e["size"] or e["size"] != count * np.dtype(dtype).itemsize:
        raise DataError(
            f"{where}: {len(raw)} bytes for shape {e['shape']} of {np.dtype(dtype)}; "
            "the data file is truncated"
        )
    return raw


# ----------------------------------------------------------------------------- V1 (one file)

# TensorProto's repeated value field per dtype (tensor.proto); int8/16, uint8/16 travel as int_val
_V1_FIELDS = {1: 5, 2: 6, 3: 7, 4: 7, 5: 7, 6: 7, 17: 7, 9: 10, 10: 11, 19: 13}
_FIXED = {5: "<f4", 6: "<f8"}  # fixed-width fields (packed or not); the others are varints


def is_v1_checkpoint(path: Path) -> bool:
    """One file ending in a table footer (not a V2 ``.index``): a V1 checkpoint, whatever its suffix
    (VGGish's is ``.ckpt``, the suffix PyTorch Lightning also uses)."""
    if is_index(path) or not path.is_file() or path.stat().st_size < FOOTER_SIZE:
        return False
    with path.open("rb") as f:
        f.seek(-8, 2)
        return int.from_bytes(f.read(8), "little") == TABLE_MAGIC


def _v1_values(tensor: bytes, dtype: int) -> np.ndarray:
    fields = _fields(tensor)
    content = b"".join(v for n, v in fields if n == 4 and isinstance(v, bytes))
    if content:  # tensor_content: the raw bytes
        return np.frombuffer(content, dtype=DTYPES[dtype])
    number = _V1_FIELDS[dtype]
    items = [v for n, v in fields if n == number]
    if number in _FIXED:
        return np.frombuffer(b"".join(items), dtype=_FIXED[number])  # type: ignore[arg-type]
    ints: list[int] = []
    for item in items:  # packed (bytes of varints) or one varint each
        if isinstance(item, int):
            ints.append(item)
            continue
        pos = 0
        while pos < len(item):
            value, pos = _varint(item, pos)
            ints.append(value)
    signed = np.array([v - (1 << 64) if v >= 1 << 63 else v for v in ints], dtype=np.int64)
    if dtype == 19:  # half_val: the float16 bits
        return signed.astype(np.uint16).view(np.float16)
    return signed.astype(DTYPES[dtype])


def _v1_meta(value: bytes) -> dict[str, tuple[int, list[int], int]]:
    """name -> (dtype, shape, number of saved slices), from the empty key's SavedTensorSlices."""
    meta = next((v for n, v in _fields(value) if n == 1), b"")
    out = {}
    for n, tensor in _fields(meta):  # type: ignore[arg-type]
        if n != 1:
            continue
        info = dict((k, v) for k, v in _fields(tensor) if k in (1, 2, 3))  # type: ignore[arg-type]
        dims = [d for k, d in _fields(info.get(2, b"")) if k == 2]  # type: ignore[arg-type]
        shape = [next((s for k, s in _fields(d) if k == 1), 0) for d in dims]  # type: ignore[arg-type]
        slices = sum(1 for k, _ in _fields(tensor) if k == 4)  # type: ignore[arg-type]
        out[info[1].decode()] = (int(info.get(3, 0)), shape, slices)  # type: ignore[union-attr,arg-type]
    return out


def _whole_slice(slice_proto: bytes) -> bool:
    """A TensorSliceProto whose every extent is the whole dimension (no ``length`` set)."""
    return all(k != 2 for n, e in _fields(slice_proto) if n == 1 for k, _ in _fields(e))  # type: ignore[arg-type]


def read_v1_checkpoint(path: str | Path, slots: bool = False) -> dict[str, np.ndarray]:
    """The numeric variables of a V1 checkpoint file (strings skipped; optimizer slots only with
    ``slots``, as :func:`read_checkpoint`)."""
    path = Path(path)
    try:
        table = _table(path)
        if not table or table[0][0] != b"":
            raise ValueError("no SavedTensorSliceMeta (empty key)")
        meta = _v1_meta(table[0][1])
        saved = {}
        for _, value in table[1:]:
            data = next((v for n, v in _fields(value) if n == 2), None)
            if not isinstance(data, bytes):
                raise ValueError("an entry without a SavedSlice")
            fields = dict(_fields(data))
            saved[fields[1].decode()] = (fields.get(2, b""), fields.get(3, b""))  # type: ignore[union-attr]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: not a readable TensorFlow V1 checkpoint ({exc}); re-download or re-save it"
        ) from None
    out = {}
    for name, (dtype, shape, slices) in meta.items():
        if dtype == DT_STRING or (not slots and name.rpartition("/")[0] in meta):
            continue
        where = f"{path}: variable {name!r}"
        if dtype not in _V1_FIELDS:
            raise DataError(f"{where}: dtype {dtype}, which this reader does not take")
        if slices != 1 or name not in saved or not _whole_slice(saved[name][0]):  # type: ignore[arg-type]
            raise DataError(f"{where}: saved in {slices} slices (a partitioned variable); not read")
        count = int(np.prod(shape, dtype=np.int64))
        values = _v1_values(saved[name][1], dtype)  # type: ignore[arg-type]
        if values.size != count:
            raise DataError(f"{where}: {values.size} values for shape {shape}; the file is damaged")
        out[name] = values.reshape(shape).astype(DTYPES[dtype], copy=True)
    return out
