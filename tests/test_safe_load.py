"""models.safe_load: torch.save checkpoints read without unpickling, and malicious ones refused."""

import dataclasses
import struct
import zipfile
from collections import OrderedDict

import pytest
import torch

from models.safe_load import UnsafeCheckpointError, load_torch_file

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16, torch.int8,
          torch.uint8, torch.bool]  # fmt: skip


def random_tensor(dtype, shape=(3, 5)):
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_floating_point:
        return torch.randn(shape).to(dtype)
    return torch.randint(0, 100, shape).to(dtype)


def assert_same(a, b):
    """Equal nested objects: same container types, same keys, tensors equal in dtype, shape and values."""
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def rewrite_zip(src, dst, replace=None, drop=()):
    """Copy a torch zip, replacing records by name suffix (`replace`) and leaving out others (`drop`)."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            suffix = name.split("/", 1)[1]
            if suffix in drop:
                continue
            zout.writestr(name, replace[suffix] if suffix in replace else zin.read(name))
    return dst


def read_record(path, suffix):
    with zipfile.ZipFile(path) as z:
        return z.read(next(n for n in z.namelist() if n.split("/", 1)[1] == suffix))


def test_every_dtype_round_trips(tmp_path):
    obj = {str(d): random_tensor(d) for d in DTYPES}
    obj["uint16"] = torch.randint(0, 60000, (4,)).to(torch.uint16)  # _rebuild_tensor_v3 on an untyped storage
    obj["empty"] = torch.zeros(0, 3)
    obj["scalar"] = torch.tensor(2.5)
    torch.save(obj, tmp_path / "t.pt")
    assert_same(load_torch_file(tmp_path / "t.pt"), obj)


def test_views_keep_offsets_strides_and_sharing(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    obj = {"base": base, "t": base.t(), "rows": base[2:5], "cols": base[:, 3:7:2], "flat": base.view(-1)[27:39]}
    torch.save(obj, tmp_path / "v.pt")
    out = load_torch_file(tmp_path / "v.pt")
    assert_same(out, obj)
    assert out["rows"].storage_offset() == 20 and out["cols"].storage_offset() == 3 and out["flat"].storage_offset() == 27
    out["base"][3, 4] = -1.0  # every view sees a write through the shared storage
    assert out["t"][4, 3] == -1.0 and out["rows"][1, 4] == -1.0 and out["flat"][34 - 27] == -1.0


@pytest.mark.parametrize("protocol", [2, 4, 5])  # torch.save's default is 2; 4 adds FRAME, MEMOIZE, SHORT_BINUNICODE
def test_nested_containers_and_parameters(tmp_path, protocol):
    lin = torch.nn.Linear(3, 2)
    obj = {"ints": [1, -5, 300, 70000, 2**70], "floats": (0.5, -1e-30), "s": "héllo", "none": None, "flags": (True, False),
           "bytes": [b"\x00\xff", b""], "size": torch.Size([2, 3]), "dtype": torch.bfloat16, "param": lin.weight,
           "nested": {"deep": [{"x": (1,)}], 7: "int key"}}  # fmt: skip
    torch.save(obj, tmp_path / "n.pt", pickle_protocol=protocol)
    out = load_torch_file(tmp_path / "n.pt")
    assert torch.equal(out.pop("param"), lin.weight.detach())  # parameters come back as plain tensors
    obj.pop("param")
    assert_same(out, obj)


def test_state_dict_keeps_order_and_metadata(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    sd = model.state_dict()
    torch.save(sd, tmp_path / "sd.pt")
    out = load_torch_file(tmp_path / "sd.pt")
    assert_same(out, sd)
    assert out._metadata == sd._metadata  # module versions, read by load_state_dict
    torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).load_state_dict(out)


def test_whisper_checkpoint_matches_exactly(tmp_path):
    whisper = pytest.importorskip("whisper")
    dims = whisper.model.ModelDimensions(n_mels=80, n_audio_ctx=16, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                                         n_vocab=100, n_text_ctx=8, n_text_state=32, n_text_head=2, n_text_layer=1)  # fmt: skip
    model = whisper.model.Whisper(dims)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    # the layout of openai-whisper's released checkpoints
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, tmp_path / "tiny.pt")
    out = load_torch_file(tmp_path / "tiny.pt")
    assert out["dims"] == dataclasses.asdict(dims)
    sd = model.state_dict()
    assert isinstance(out["model_state_dict"], OrderedDict) and list(out["model_state_dict"]) == list(sd)
    for k, v in sd.items():
        assert out["model_state_dict"][k].dtype == v.dtype and torch.equal(out["model_state_dict"][k], v), k
    whisper.model.Whisper(whisper.model.ModelDimensions(**out["dims"])).load_state_dict(out["model_state_dict"])


def test_big_endian_file_is_byte_swapped(tmp_path):
    obj = {"f": torch.randn(4), "h": torch.randn(3).half(), "i": torch.arange(5), "b": torch.tensor([True, False])}
    torch.save(obj, tmp_path / "le.pt")
    swapped = {}
    for key, t in enumerate(obj.values()):  # storages are numbered in the order torch.save meets them
        raw = torch.frombuffer(bytearray(read_record(tmp_path / "le.pt", f"data/{key}")), dtype=torch.uint8)
        swapped[f"data/{key}"] = raw.view(-1, t.element_size()).flip(1).numpy().tobytes()  # each element's bytes reversed
    rewrite_zip(tmp_path / "le.pt", tmp_path / "be.pt", {"byteorder": b"big", **swapped})
    assert_same(load_torch_file(tmp_path / "be.pt"), obj)


def binunicode(text: str) -> bytes:
    """The BINUNICODE opcode pushing `text`."""
    return b"X" + struct.pack("<I", len(text.encode())) + text.encode()


def malicious_pickle(module: str, name: str, command: str) -> bytes:
    """Protocol 2: GLOBAL module.name, a one-string argument tuple, REDUCE: pickle.loads would call it."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + binunicode(command) + b"\x85R."


REFUSED = [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("subprocess", "getoutput"), ("torch", "load")]


@pytest.mark.parametrize("module,name", REFUSED)
def test_malicious_global_is_refused_and_never_runs(tmp_path, module, name):
    marker = tmp_path / "pwned"
    command = f"touch {marker}" if name != "eval" else f"open({str(marker)!r}, 'w')"
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    rewrite_zip(tmp_path / "ok.pt", tmp_path / "evil.pt", {"data.pkl": malicious_pickle(module, name, command)})
    with pytest.raises(UnsafeCheckpointError, match=rf"evil\.pt: refusing global {module}\.{name}"):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_malicious_stack_global_inside_a_valid_dict_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    # {"ok": 1, "x": os.system("touch ...")}: STACK_GLOBAL (protocol 4), argument tuple, REDUCE, inside SETITEMS
    call = binunicode("os") + binunicode("system") + b"\x93" + binunicode(f"touch {marker}") + b"\x85R"
    payload = b"\x80\x04}(" + binunicode("ok") + b"K\x01" + binunicode("x") + call + b"u."
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    rewrite_zip(tmp_path / "ok.pt", tmp_path / "evil.pt", {"data.pkl": payload})
    with pytest.raises(UnsafeCheckpointError, match="refusing global os.system"):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_object_building_opcodes_are_refused(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    payload = b"\x80\x02ccollections\nOrderedDict\n)\x81."  # NEWOBJ on an allowed class: still refused
    rewrite_zip(tmp_path / "ok.pt", tmp_path / "evil.pt", {"data.pkl": payload})
    with pytest.raises(UnsafeCheckpointError, match="opcode NEWOBJ"):
        load_torch_file(tmp_path / "evil.pt")


def test_legacy_and_truncated_files_are_refused(tmp_path):
    obj = {"w": torch.randn(64, 64)}
    torch.save(obj, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="is not a torch zip checkpoint"):
        load_torch_file(tmp_path / "legacy.pt")
    torch.save(obj, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="is not a torch zip checkpoint"):
        load_torch_file(tmp_path / "cut.pt")


def test_incomplete_archives_are_refused(tmp_path):
    torch.save({"w": torch.arange(4.0)}, tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="data.pkl"):
        load_torch_file(rewrite_zip(tmp_path / "ok.pt", tmp_path / "nopkl.pt", drop={"data.pkl"}))
    with pytest.raises(ValueError, match="data/0 is not in the archive"):
        load_torch_file(rewrite_zip(tmp_path / "ok.pt", tmp_path / "nodata.pt", drop={"data/0"}))
    with pytest.raises(ValueError, match="holds 8 bytes; its header says 4"):
        load_torch_file(rewrite_zip(tmp_path / "ok.pt", tmp_path / "short.pt", {"data/0": b"\x00" * 8}))
    pkl = read_record(tmp_path / "ok.pt", "data.pkl")
    assert pkl.count(b"K\x00K\x04\x85") == 1  # offset 0, size (4,)
    too_big = pkl.replace(b"K\x00K\x04\x85", b"K\x00K\x09\x85")  # size (9,) on a storage of 4
    with pytest.raises(ValueError, match="needs 9 elements; its storage holds 4"):
        load_torch_file(rewrite_zip(tmp_path / "ok.pt", tmp_path / "big.pt", {"data.pkl": too_big}))
    with pytest.raises(ValueError, match="data.pkl is malformed"):
        load_torch_file(rewrite_zip(tmp_path / "ok.pt", tmp_path / "bad.pt", {"data.pkl": b"\x80\x02t."}))  # TUPLE without MARK


def test_damaged_zip_is_refused(tmp_path):
    torch.save({"w": torch.arange(1000.0)}, tmp_path / "ok.pt")
    data = bytearray((tmp_path / "ok.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the storage record: its CRC no longer matches
    (tmp_path / "flip.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged zip"):
        load_torch_file(tmp_path / "flip.pt")


def test_memory_stays_bounded_by_the_file_size(tmp_path):
    """A compressed record that expands past the file's size (a zip bomb) and a stride-0 view
    reaching more bytes than the file holds are refused before anything is allocated; a small
    expanded tensor still loads."""
    torch.save({"w": torch.zeros(4_000_000)}, tmp_path / "zeros.pt")  # 16 MB, stored
    with zipfile.ZipFile(tmp_path / "zeros.pt") as zin, zipfile.ZipFile(tmp_path / "bomb.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    assert (tmp_path / "bomb.pt").stat().st_size < 100_000
    with pytest.raises(ValueError, match="expand to more than the file's"):
        load_torch_file(tmp_path / "bomb.pt")
    torch.save({"w": torch.zeros(1).expand(10_000_000)}, tmp_path / "view.pt")
    with pytest.raises(ValueError, match=r"the tensors reach 40000000 bytes \(the last of size \(10000000,\), stride \(0,\)\)"):
        load_torch_file(tmp_path / "view.pt")
    w = torch.randn(50_000)  # 200 kB under 4,000 names: each name is a view of its own, 800 MB in all
    torch.save({f"k{i}": w[:] for i in range(4000)}, tmp_path / "names.pt")
    with pytest.raises(ValueError, match="more than twice the file's"):
        load_torch_file(tmp_path / "names.pt")
    small = {"w": torch.arange(3.0).expand(10, 3)}
    torch.save(small, tmp_path / "small.pt")
    assert_same(load_torch_file(tmp_path / "small.pt"), small)
    compressed = {"w": torch.randn(1000)}  # a compressed record that stays within the file's size still loads
    torch.save(compressed, tmp_path / "c.pt")
    with zipfile.ZipFile(tmp_path / "c.pt") as zin, zipfile.ZipFile(tmp_path / "c2.pt", "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    assert_same(load_torch_file(tmp_path / "c2.pt"), compressed)


def _deflated(src, dst, records: dict[str, bytes]):
    """Copy a torch zip with some records replaced by `records` (by name suffix), deflated."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            suffix = name.split("/", 1)[1]
            zout.writestr(name, records.get(suffix, zin.read(name)), zipfile.ZIP_DEFLATED if suffix in records else zipfile.ZIP_STORED)
    return dst


def _declare_size(path, suffix: str, size: int, crc: int):
    """Make the zip's directory and local header say `size` bytes (and `crc`) for a record."""
    data = bytearray(path.read_bytes())
    i = data.find(b"PK\x01\x02")
    while i >= 0:
        n = struct.unpack_from("<H", data, i + 28)[0]
        if data[i + 46 : i + 46 + n].decode().endswith(suffix):
            struct.pack_into("<I", data, i + 16, crc)
            struct.pack_into("<I", data, i + 24, size)
            local = struct.unpack_from("<I", data, i + 42)[0]
            struct.pack_into("<I", data, local + 14, crc)
            struct.pack_into("<I", data, local + 22, size)
        i = data.find(b"PK\x01\x02", i + 4)
    path.write_bytes(bytes(data))


def test_no_record_inflates_past_its_bound(tmp_path):
    """A compressed data.pkl or byteorder record larger than the file is refused unread; a record
    whose directory under-states what its stream inflates to is read no further than declared."""
    import tracemalloc
    import zlib

    torch.save({"w": torch.zeros(1)}, tmp_path / "base.pt")
    for record in ("data.pkl", "byteorder"):
        bomb = _deflated(tmp_path / "base.pt", tmp_path / "bomb.pt", {record: b"\x00" * 20_000_000})
        with pytest.raises(ValueError, match=f"record .*{record} expands to 20000000 bytes, more than the file's"):
            load_torch_file(bomb)
    liar = _deflated(tmp_path / "base.pt", tmp_path / "liar.pt", {"data/0": b"\x00" * 20_000_000})
    _declare_size(liar, "/data/0", 4, zlib.crc32(b"\x00" * 4))
    tracemalloc.start()
    out = load_torch_file(liar)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert torch.equal(out["w"], torch.zeros(1)) and peak < 5_000_000  # it used to inflate all 20 MB first


def _reduce_repeats(n_chars: int, times: int) -> bytes:
    """_codecs.encode on one memoized n_chars string, REDUCE repeated `times` times (5 bytes each)."""
    text = b"X" + struct.pack("<I", n_chars) + b"a" * n_chars
    once = b"c_codecs\nencode\nq\x00" + text + b"X\x06\x00\x00\x00latin1\x86q\x01R0"
    return b"\x80\x02" + once + b"h\x00h\x01R0" * times + b"N."


HOSTILE = {
    "a deep tuple as a dict key": (b"\x80\x02}" + b"K\x01" + b"\x85" * 1000 + b"K\x02s.", "a dict key of type tuple"),
    "colliding huge int keys": (b"\x80\x02}" + b"\x8a\x09" + (1 << 64).to_bytes(9, "little") + b"K\x01s.", "a dict key of type int out of range"),
    "a tuple as a global's module": (b"\x80\x04)\x8c\x01x\x93.", "STACK_GLOBAL of a tuple and a str"),
    "bytes copied from one memoized string": (_reduce_repeats(20_000, 50), "builds more bytes / sizes / dict entries than"),
    "one state dict's attributes set twice": (b"\x80\x02ccollections\nOrderedDict\n)Rq\x00}q\x01bh\x01b.", "BUILD of one OrderedDict twice"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_pickles_are_refused_before_they_cost_memory_or_time(tmp_path, case):
    """Pickles that would crash hashing (a deep tuple), cost quadratic time (colliding keys, a
    state set again and again) or copy one memoized argument many times are refused."""
    payload, message = HOSTILE[case]
    torch.save({"w": torch.zeros(1)}, tmp_path / "ok.pt")
    with pytest.raises(ValueError, match=message):
        load_torch_file(rewrite_zip(tmp_path / "ok.pt", tmp_path / "bad.pt", {"data.pkl": payload}))


def test_tensor_layouts_past_two_to_the_63_are_refused_before_arithmetic():
    from models.safe_load import _strided

    with pytest.raises(ValueError, match=r"offset=out of range size=\(1,\) stride=\(1,\) is not valid"):
        _strided(torch.zeros(4), 1 << 4000, (1,), (1,))
