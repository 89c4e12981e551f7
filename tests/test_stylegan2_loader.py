"""Safe loading of official stylegan2-ada-pytorch pickles and reproduction of the reference."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import pickle
import pickletools
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from huref.errors import RenderError, UnsafeFileError
from huref.render.stylegan2 import Generator, generator_from_pickle, generator_from_record
from huref.render.stylegan2.pickle_loader import PersistentRecord, load_stylegan_pickle

SHARED = Path(__file__).parents[1].parent / "shared"
FIXTURES = SHARED / "fixtures" / "stylegan2"
PKL = FIXTURES / "generator-64.pkl"


def _need_fixtures() -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"{FIXTURES} is absent")


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    _need_fixtures()
    return load_file(str(FIXTURES / "reference-64.safetensors"))


@pytest.fixture(scope="module")
def generator() -> Generator:
    _need_fixtures()
    return generator_from_pickle(PKL)


def _keys(name: str) -> list[tuple[str, list[int]]]:
    rows = []
    for line in (FIXTURES / name).read_text().splitlines():
        if not line.strip() or line.startswith("TOTAL"):
            continue
        key, shape = line.split(None, 1)
        rows.append((key, [int(v) for v in shape.strip("[] ").split(",") if v.strip()]))
    return rows


# --- reproduction of the official outputs --------------------------------------------------


def test_reproduces_official_reference_outputs(generator: Generator, reference: dict) -> None:
    z = reference["z"]
    with torch.no_grad():
        got = {
            "ws_psi1": generator.mapping(z, 1.0),
            "img_psi1": generator(z, 1.0, noise_mode="const"),
            "ws_psi05_cutoff8": generator.mapping(z, 0.5, 8),
            "img_psi05_cutoff8": generator(z, 0.5, 8, noise_mode="const"),
        }
    for name, value in got.items():
        diff = (value - reference[name]).abs().max().item()
        print(f"{name}: max abs diff {diff:.3g}")
        assert value.shape == reference[name].shape
        assert diff <= 1e-4, name


def test_noise_modes_change_the_image(generator: Generator, reference: dict) -> None:
    z = reference["z"][:1]
    with torch.no_grad():
        const = generator(z, 0.5, 8, noise_mode="const")
        none = generator(z, 0.5, 8, noise_mode="none")
        rand1 = generator(z, 0.5, 8, noise_mode="random", rng=torch.Generator().manual_seed(1))
        rand2 = generator(z, 0.5, 8, noise_mode="random", rng=torch.Generator().manual_seed(1))
    assert (const - none).abs().max() > 1e-3
    assert (const - rand1).abs().max() > 1e-3
    assert torch.equal(rand1, rand2)
    with pytest.raises(RenderError, match="noise_mode"):
        generator(z, noise_mode="fixed")


def test_state_dict_matches_official_names_and_shapes(generator: Generator) -> None:
    want = _keys("keys-64.txt")
    got = [(k, list(v.shape)) for k, v in generator.state_dict().items()]
    assert len(want) == 106
    assert got == want


def test_afhqdog_512_configuration_has_official_structure() -> None:
    _need_fixtures()
    afhq = Generator(
        z_dim=512,
        c_dim=0,
        w_dim=512,
        img_resolution=512,
        img_channels=3,
        mapping_kwargs={"num_layers": 8},
        synthesis_kwargs={
            "channel_base": 32768,
            "channel_max": 512,
            "num_fp16_res": 4,
            "conv_clamp": 256,
        },
    )
    want = _keys("afhqdog-512-keys.txt")
    got = [(k, list(v.shape)) for k, v in afhq.state_dict().items()]
    assert len(got) == 163
    assert got == want
    assert sum(math.prod(s) for _, s in got) == 30_976_487
    assert afhq.num_ws == 16


# --- the restricted unpickler --------------------------------------------------------------


def _fake_reconstruct(meta: Any) -> Any:  # only ever *referenced* by the pickles we build
    raise AssertionError("never called: the test pickles are never loaded with pickle.load")


class _Persistent:
    """Pickles like an official persistent network: a call of the persistence function."""

    def __init__(self, class_name: str, state: dict, module_src: str = "# omitted\n") -> None:
        self.meta = {
            "type": "class",
            "version": 6,
            "module_src": module_src,
            "class_name": class_name,
            "state": state,
        }

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (_fake_reconstruct, (self.meta,))


class _Call:
    """Pickles as ``func(*args)``: the shape of every pickle exploit."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return (self.func, self.args)


@pytest.fixture()
def official_globals(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``torch_utils.persistence._reconstruct_persistent_obj`` and ``dnnlib.util.EasyDict``
    exist so that pickle.dumps writes the same GLOBAL opcodes as an official checkpoint."""
    persistence = types.ModuleType("torch_utils.persistence")
    _fake_reconstruct.__module__ = "torch_utils.persistence"
    _fake_reconstruct.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _fake_reconstruct  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)
    yield


def _official_like(g_state: dict, top: dict | None = None, src: str = "# omitted\n") -> bytes:
    g_ema = _Persistent("Generator", g_state, module_src=src)
    data = {
        "G": g_ema,
        "D": None,
        "G_ema": g_ema,
        "training_set_kwargs": None,
        "augment_pipe": None,
        **(top or {}),
    }
    return pickle.dumps(data, protocol=3)


def _globals_in(data: bytes) -> set[str]:
    found = set()
    for op, arg, _ in pickletools.genops(data):  # reads opcodes, executes nothing
        if op.name == "GLOBAL":
            found.add(str(arg).replace(" ", "."))
    return found


def _plain_state() -> dict:
    return {
        "training": False,
        "_parameters": collections.OrderedDict(),
        "_buffers": collections.OrderedDict(),
        "_modules": collections.OrderedDict(),
        "_non_persistent_buffers_set": set(),
        "_init_args": (),
        "_init_kwargs": {},
    }


PAYLOADS = {
    "os.system": lambda marker: _Call(os.system, f"touch {marker}"),
    "builtins.exec": lambda marker: _Call(exec, f"open({str(marker)!r}, 'w').write('x')"),
    "builtins.eval": lambda marker: _Call(eval, f"open({str(marker)!r}, 'w').write('x')"),
    "subprocess.call": lambda marker: _Call(subprocess.call, ["touch", str(marker)]),
}


@pytest.mark.parametrize("where", ["module_state", "top_level"])
@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_malicious_pickle_is_refused_and_payload_never_runs(
    official_globals: None, tmp_path: Path, payload: str, where: str, capsys: pytest.CaptureFixture
) -> None:
    marker = tmp_path / "pwned"
    evil = PAYLOADS[payload](marker)
    state = _plain_state()
    if where == "module_state":
        state["weight_gain"] = evil  # hidden among a module's plain attributes
        data = _official_like(state)
    else:
        data = _official_like(state, top={"augment_pipe": evil})
    refused = _globals_in(data) - {
        "torch_utils.persistence._reconstruct_persistent_obj",
        "collections.OrderedDict",
        "builtins.set",
    }
    assert len(refused) == 1  # the exploit's callable really is in the stream
    path = tmp_path / "evil.pkl"
    path.write_bytes(data)
    with pytest.raises(UnsafeFileError, match=r"refused global") as info:
        load_stylegan_pickle(path)
    assert refused.pop() in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    with pytest.raises(UnsafeFileError):
        generator_from_pickle(path)
    assert not marker.exists()
    # the command line: one line, exit 2, nothing written, payload never run
    from huref.cli import main

    out = tmp_path / "g.safetensors"
    capsys.readouterr()
    assert main(["convert-stylegan2", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refused global" in err[0]
    assert not marker.exists() and not out.exists()


def test_module_src_is_never_executed(official_globals: None, tmp_path: Path) -> None:
    marker = tmp_path / "from_module_src"
    src = f"open({str(marker)!r}, 'w').write('executed')\n"
    path = tmp_path / "src.pkl"
    path.write_bytes(_official_like(_plain_state(), src=src))
    data = load_stylegan_pickle(path)
    assert isinstance(data["G_ema"], PersistentRecord)
    assert data["G_ema"].class_name == "Generator"
    assert not any(src in repr(v) for v in dataclasses.asdict(data["G_ema"]).values())
    assert not marker.exists()


def test_allowed_global_with_out_of_bounds_view_is_refused(tmp_path: Path) -> None:
    storage = torch.zeros(4).storage()  # pickles as torch.storage._load_from_bytes(blob)
    view = _Call(
        torch._utils._rebuild_tensor_v2,
        storage,
        0,
        (1000,),
        (1,),
        False,
        collections.OrderedDict(),
    )
    path = tmp_path / "oob.pkl"
    path.write_bytes(pickle.dumps({"G_ema": view}, protocol=3))
    with pytest.raises(UnsafeFileError, match="exceeds storage"):
        load_stylegan_pickle(path)


def test_persistent_ids_and_zip_archives_are_refused(tmp_path: Path) -> None:
    class WithPid(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return ("storage", "x") if isinstance(obj, bytearray) else None

    path = tmp_path / "pid.pkl"
    with path.open("wb") as f:
        WithPid(f, protocol=3).dump({"G_ema": bytearray(b"abc")})
    with pytest.raises(UnsafeFileError, match="persistent id"):
        load_stylegan_pickle(path)
    zpath = tmp_path / "zip.pkl"
    torch.save({"w": torch.zeros(2)}, zpath)
    with pytest.raises(RenderError, match="zip archive"):
        load_stylegan_pickle(zpath)
    (tmp_path / "trunc.pkl").write_bytes(pickle.dumps({"G_ema": list(range(99))}, 3)[:-9])
    with pytest.raises(RenderError, match="not a readable"):
        load_stylegan_pickle(tmp_path / "trunc.pkl")


# --- rebuilding the network from the records -----------------------------------------------


def _child(record: PersistentRecord, dotted: str) -> PersistentRecord:
    for part in dotted.split("."):
        record = record.state["_modules"][part]
    return record


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda g: _child(g, "synthesis.b8.conv0").state["_parameters"].pop("weight"),
            r"lacks tensor G_ema\.synthesis\.b8\.conv0\.weight",
        ),
        (
            lambda g: _child(g, "mapping").state["_buffers"].__setitem__("w_avg", torch.zeros(3)),
            r"G_ema\.mapping\.w_avg has shape \[3\], expected \[64\]",
        ),
        (
            lambda g: _child(g, "mapping").state["_buffers"].__setitem__("extra", torch.zeros(3)),
            r"G_ema\.mapping\.extra is not part",
        ),
        (
            lambda g: g.state["_modules"].__setitem__(
                "synthesis", dataclasses.replace(_child(g, "synthesis"), class_name="Evil")
            ),
            r"unknown or misplaced class 'Evil'",
        ),
        (
            lambda g: _child(g, "synthesis.b16.conv1").state.__setitem__("conv_clamp", 128),
            r"G_ema\.synthesis\.b16\.conv1\.conv_clamp is 128",
        ),
        (
            lambda g: _child(g, "synthesis").state["_modules"].pop("b32"),
            r"lacks submodule G_ema\.synthesis\.b32",
        ),
        (
            lambda g: g.state["_init_kwargs"]["synthesis_kwargs"].__setitem__(
                "architecture",
                "resnet",
            ),
            r"architecture 'resnet' is not supported",
        ),
    ],
    ids=["missing", "shape", "unclaimed", "class_name", "attribute", "submodule", "config"],
)
def test_rebuild_refuses_inconsistent_checkpoints(mutate: Callable, message: str) -> None:
    _need_fixtures()
    record = load_stylegan_pickle(PKL)["G_ema"]  # a fresh copy: the mutations stay local
    mutate(record)
    with pytest.raises(RenderError, match=message):
        generator_from_record(record)


class _TensorThenState:
    """Pickles as a tensor rebuilt within its storage's bounds, then a BUILD whose state re-views
    the storage far past them (``Tensor.__setstate__`` -> ``set_``)."""

    def __init__(self, n: int) -> None:
        self.storage = torch.tensor([1.0, 2.0, 3.0]).storage()
        self.n = n

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.storage, 0, (3,), (1,), False, collections.OrderedDict())
        return (torch._utils._rebuild_tensor_v2, args, (self.storage, 0, (self.n,), (1,)))


def test_build_cannot_grow_a_tensor_past_its_storage(tmp_path: Path) -> None:
    path = tmp_path / "grow.pkl"
    path.write_bytes(pickle.dumps({"t": _TensorThenState(1_000_000)}, protocol=3))
    assert any(op.name == "BUILD" for op, _, _ in pickletools.genops(path.read_bytes()))
    with pytest.raises(UnsafeFileError, match="refused BUILD on a Tensor"):
        load_stylegan_pickle(path)


def test_build_cannot_change_the_loaders_own_classes(tmp_path: Path) -> None:
    """GLOBAL EasyDict; BUILD (None, {'__setitem__': set}) would set an attribute of the class
    itself, for every later load in the process."""
    from huref.render.stylegan2.pickle_loader import EasyDict

    name = b"__setitem__"
    data = (
        b"\x80\x02cdnnlib.util\nEasyDict\nN}X"
        + len(name).to_bytes(4, "little")
        + name
        + b"cbuiltins\nset\ns\x86b0}."
    )
    path = tmp_path / "patch.pkl"
    path.write_bytes(data)
    before = EasyDict.__setitem__
    with pytest.raises(UnsafeFileError, match="refused BUILD on a type"):
        load_stylegan_pickle(path)
    assert EasyDict.__setitem__ is before


# --- malformed or oversized configurations -------------------------------------------------


def _config(**changes: Any) -> dict:
    """The official-style ``_init_kwargs`` of a tiny generator, with some values changed."""
    kwargs: dict[str, Any] = {
        "z_dim": 64,
        "c_dim": 0,
        "w_dim": 64,
        "img_resolution": 4,
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": 8},
        "synthesis_kwargs": {"channel_base": 64, "channel_max": 64},
    }
    for key, value in changes.items():
        group, _, name = key.partition("__")
        if name:
            kwargs[group] = {**kwargs[group], name: value}
        else:
            kwargs[group] = value
    return kwargs


def _self_referencing() -> list:
    loop: list = [1, 3, 3]
    loop.append(loop)
    return loop


BAD_CONFIGS = {
    "z_dim_str": ({"z_dim": "64"}, r"z_dim must be an integer"),
    "w_dim_negative": ({"w_dim": -1}, r"w_dim = -1 is outside"),
    "w_dim_huge": ({"w_dim": 200_000}, r"w_dim = 200000 is outside"),
    "resolution_float": ({"img_resolution": 8.0}, r"img_resolution must be an integer"),
    "resolution_not_power_of_two": ({"img_resolution": 12}, r"not a power of two"),
    "resolution_huge": ({"img_resolution": 1 << 16}, r"img_resolution = 65536 is outside"),
    "no_image_channels": ({"img_channels": 0}, r"img_channels = 0 is outside"),
    "channel_max_zero": ({"synthesis_kwargs__channel_max": 0}, r"channel_max = 0 is outside"),
    "channel_base_too_small": ({"synthesis_kwargs__channel_base": 2}, r"leaves no channels"),
    "ragged_filter": ({"synthesis_kwargs__resample_filter": [[1, 2], [3]]}, r"resample_filter"),
    "self_referencing_filter": (
        {"synthesis_kwargs__resample_filter": _self_referencing()},
        r"nested more than",
    ),
    "clamp_str": ({"synthesis_kwargs__conv_clamp": "x"}, r"conv_clamp must be a finite number"),
    "even_kernel": ({"synthesis_kwargs__kernel_size": 4}, r"kernel_size 4 is not odd"),
    "layers_float": ({"mapping_kwargs__num_layers": 2.5}, r"num_layers must be an integer"),
    "layers_huge": ({"mapping_kwargs__num_layers": 10_000}, r"num_layers = 10000 is outside"),
    "mapping_kwargs_list": ({"mapping_kwargs": [1, 2]}, r"mapping_kwargs must be a dict"),
    "unknown_option": ({"synthesis_kwargs__evil": 1}, r"unsupported synthesis_kwargs"),
    "too_many_parameters": (
        {
            "w_dim": 4096,
            "img_resolution": 2048,
            "synthesis_kwargs__channel_base": 1 << 20,
            "synthesis_kwargs__channel_max": 4096,
        },
        r"parameters, more than",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_malformed_generator_configuration_is_one_render_error(case: str) -> None:
    changes, message = BAD_CONFIGS[case]
    state = {**_plain_state(), "_init_kwargs": _config(**changes)}
    with pytest.raises(RenderError, match=message) as info:
        generator_from_record(PersistentRecord("Generator", 6, state))
    assert "\n" not in str(info.value)


def test_malformed_configuration_on_the_command_line_exits_2_and_writes_nothing(
    official_globals: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from huref.cli import main

    state = {**_plain_state(), "_init_kwargs": _config(synthesis_kwargs__channel_max=0)}
    path, out = tmp_path / "g.pkl", tmp_path / "g.safetensors"
    path.write_bytes(_official_like(state))
    capsys.readouterr()
    assert main(["convert-stylegan2", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "channel_max = 0" in err[0]
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_a_tiny_file_declaring_a_big_network_allocates_nothing(
    official_globals: None, tmp_path: Path
) -> None:
    """A configuration within the bounds (~530 MiB of float32 weights) in a file with no tensors:
    refused from the meta-device skeleton, before the network is allocated. Measured in a
    child process, whose peak memory is its own."""
    big = _config(z_dim=4096, w_dim=4096, img_resolution=64, synthesis_kwargs__channel_base=1 << 14)
    pkl = tmp_path / "big.pkl"
    pkl.write_bytes(_official_like({**_plain_state(), "_init_kwargs": big}))
    assert pkl.stat().st_size < 2000
    st = tmp_path / "big.safetensors"
    from safetensors.torch import save_file

    from huref.render.stylegan2.convert import KIND, META_KIND, META_KWARGS

    meta = {"format": "pt", META_KIND: KIND, META_KWARGS: json.dumps(big)}
    save_file({"x": torch.zeros(1)}, str(st), metadata=meta)
    script = (
        "import resource, sys\n"
        "from huref.errors import RenderError\n"
        "from huref.render.stylegan2 import load_generator\n"
        "def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024\n"
        "before = peak()\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        load_generator(path)\n"
        "    except RenderError as e:\n"
        "        print('refused', e)\n"
        "print('growth_mib', peak() - before)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(pkl), str(st)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("refused") and "lacks submodule" in lines[0]
    assert lines[1].startswith("refused") and "lacks tensor" in lines[1]
    growth = int(lines[2].split()[1])
    assert growth < 100, f"peak memory grew by {growth} MiB: the declared network was allocated"
