"""Every format huref reads gives back the weights that were written, under Hugging Face names:
GGUF (LLaMA with llama.cpp's q/k permutation, Qwen2 with biases), torch ``.bin`` (single and
sharded), bare ``.safetensors``, llama2.c; plus row reads, file hashes and vocabularies."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from formatkit import gguf_name, tiny_llama, tiny_qwen2, write_gguf, write_llama2c
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from huref.arch import load_model
from huref.checkpoint import open_checkpoint
from huref.checkpoint.safetensors_io import SafetensorsSource
from huref.checkpoint.vocab import load_vocab
from huref.invariants import Settings, fingerprint_model
from huref.scan.discover import discover

# Grid step of each quantized type, as a fraction of the largest |w| in a row (a row holds whole
# 32-weight blocks, so its largest |w| bounds each block's scale). Rounding to a grid errs by at
# most one step (Q4_0/Q5_0 clamp their top code) and by a quarter step on average.
QUANT_STEP = {"Q8_0": 1 / 127, "Q5_1": 2 / 31, "Q5_0": 1 / 16, "Q4_1": 2 / 15, "Q4_0": 1 / 8}
ROLES = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "attn_norm", "mlp_norm")


def _assert_matches_type(got: torch.Tensor, want: torch.Tensor, qtype: str, name: str) -> None:
    assert got.shape == want.shape, name
    if qtype == "F32" or want.dim() == 1:  # vectors are always written in F32
        assert torch.equal(got, want), f"{name}: F32 must read back bit for bit"
    elif qtype == "F16":
        assert torch.equal(got, want.half().float()), name  # both round to nearest even
    elif qtype == "BF16":
        assert torch.equal(got, want.bfloat16().float()), name
    else:
        step = want.abs().amax(dim=1, keepdim=True) * QUANT_STEP[qtype]
        err = (got - want).abs()
        assert (err <= step * 1.01).all(), f"{name}: {qtype} error {(err / step).max():.2f} steps"
        assert (err / step).mean() < 0.35, f"{name}: errors are not the rounding of a grid"


# ------------------------------------------------------------------ GGUF


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_gguf_llama_reads_back_hf_layout(qtype: str, tmp_path: Path) -> None:
    model, sd = tiny_llama()
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(16)] + [f"▁w{i}" for i in range(77)]
    path = write_gguf(tmp_path / f"tiny-{qtype}.gguf", sd, model.config, qtype=qtype, tokens=tokens)
    ck = open_checkpoint(path)
    assert ck.format == "gguf"
    assert sorted(ck.source.names()) == sorted(sd), "every GGUF tensor maps back to its HF name"
    for name, want in sd.items():
        _assert_matches_type(ck.source.read(name), want, qtype, name)
        info = ck.source.info(name)
        assert info.shape == tuple(want.shape)
        assert info.dtype == (qtype if want.dim() == 2 else "F32")
    cfg = ck.config
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (2, 4, 2)
    assert (cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]) == (32, 64, 96)
    assert cfg["tie_word_embeddings"] is False
    m = load_model(ck)  # the both-way and shape checks pass on the synthesised config
    assert m.spec.name == "llama" and not m.cfg.tied
    hf = load_model(_save_hf(model, tmp_path / "hf"))
    for layer in range(2):
        for role in ROLES:
            _assert_matches_type(m.tensor(role, layer), hf.tensor(role, layer), qtype, f"{role}.{layer}")
    assert ck.vocab is not None and ck.vocab.style == "sentencepiece"
    assert ck.vocab.tokens[3 + 10] == "\n" and ck.vocab.tokens[20] == " w1"
    assert ck.vocab.special == frozenset({0, 1, 2})


def test_gguf_without_output_tensor_is_tied(tmp_path: Path) -> None:
    model, sd = tiny_llama(tie=True)
    m = load_model(write_gguf(tmp_path / "tied.gguf", sd, model.config))
    assert m.cfg.tied and not m.has("lm_head")
    assert torch.equal(m.tensor("embed"), sd["model.embed_tokens.weight"])


def test_gguf_qwen2_keeps_rows_and_biases(tmp_path: Path) -> None:
    """llama.cpp permutes q/k rows for the LLaMA architecture only; Qwen2 rows are as in HF."""
    model, sd = tiny_qwen2()
    assert "model.layers.0.self_attn.q_proj.bias" in sd
    ck = open_checkpoint(write_gguf(tmp_path / "qwen2.gguf", sd, model.config, arch="qwen2"))
    for name, want in sd.items():
        assert torch.equal(ck.source.read(name), want), name
    m = load_model(ck)
    assert m.cfg.model_type == "qwen2"
    for layer in range(2):
        for role in ("attn_q_bias", "attn_k_bias", "attn_v_bias"):
            assert m.has(role, layer)
        torch.testing.assert_close(
            m.tensor("attn_q", layer), sd[f"model.layers.{layer}.self_attn.q_proj.weight"]
        )


def test_gguf_f32_read_is_a_private_copy(tmp_path: Path) -> None:
    """An F32 tensor must not alias the read-only file mapping: writing to it is the caller's right."""
    model, sd = tiny_llama()
    ck = open_checkpoint(write_gguf(tmp_path / "f32.gguf", sd, model.config))
    t = ck.source.read("model.layers.0.self_attn.v_proj.weight")
    t.add_(1.0)  # would crash on a read-only mapping
    assert torch.equal(
        ck.source.read("model.layers.0.self_attn.v_proj.weight"), sd["model.layers.0.self_attn.v_proj.weight"]
    )


def test_gguf_names_follow_llama_cpp() -> None:
    assert gguf_name("model.layers.3.self_attn.q_proj.weight") == "blk.3.attn_q.weight"
    assert gguf_name("model.embed_tokens.weight") == "token_embd.weight"


# ------------------------------------------------------------------ Hugging Face layouts


def _save_hf(model: torch.nn.Module, dest: Path, shard: str = "1GB") -> Path:
    model.save_pretrained(dest, max_shard_size=shard)
    return dest


def _assert_same_tensors(a: Path, b: Path) -> None:
    sa, sb = open_checkpoint(a).source, open_checkpoint(b).source
    assert sorted(sa.names()) == sorted(sb.names())
    for n in sa.names():
        ta, tb = sa.read(n), sb.read(n)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), n
        assert sa.info(n).shape == sb.info(n).shape and sa.info(n).dtype == sb.info(n).dtype


def test_torch_bin_single_and_sharded_equal_safetensors(tmp_path: Path) -> None:
    model, sd = tiny_llama()
    st = _save_hf(model, tmp_path / "st")
    single = tmp_path / "bin1"
    single.mkdir()
    shutil.copy(st / "config.json", single)
    torch.save(sd, single / "pytorch_model.bin")
    sharded = tmp_path / "bin3"
    sharded.mkdir()
    shutil.copy(st / "config.json", sharded)
    names = list(sd)
    weight_map = {}
    for i, part in enumerate((names[:5], names[5:12], names[12:]), 1):
        fname = f"pytorch_model-{i:05d}-of-00003.bin"
        torch.save({n: sd[n] for n in part}, sharded / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (sharded / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )

    expected = fingerprint_model(st, Settings(modes=("robust",)))
    for folder in (single, sharded):
        ck = open_checkpoint(folder)
        assert ck.format == "hf-bin"
        _assert_same_tensors(folder, st)
        load_model(folder)
        # the invariants stream layers through the same source (not only tensor by tensor)
        fp = fingerprint_model(folder, Settings(modes=("robust",)))
        assert fp.robust is not None and expected.robust is not None
        assert torch.equal(fp.robust.terms, expected.robust.terms)
    assert len(open_checkpoint(sharded).weight_files()) == 3


def test_sharded_safetensors_equal_single(tmp_path: Path) -> None:
    model, _ = tiny_llama()
    one, many = _save_hf(model, tmp_path / "one"), _save_hf(model, tmp_path / "many", "40KB")
    assert len(open_checkpoint(many).weight_files()) > 1
    _assert_same_tensors(one, many)


def test_bare_safetensors_file_with_config_beside_it(tmp_path: Path) -> None:
    model, sd = tiny_llama()
    st = _save_hf(model, tmp_path / "hf")
    bare = tmp_path / "loose"
    bare.mkdir()
    shutil.copy(st / "model.safetensors", bare / "tiny.safetensors")
    shutil.copy(st / "config.json", bare / "config.json")
    ck = open_checkpoint(bare / "tiny.safetensors")
    assert ck.format == "safetensors" and ck.name == "tiny"
    m = load_model(ck)
    assert torch.equal(m.tensor("mlp_down", 1), sd["model.layers.1.mlp.down_proj.weight"])


def test_read_rows_returns_requested_rows_and_reads_only_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, sd = tiny_llama()
    src = open_checkpoint(_save_hf(model, tmp_path / "hf")).source
    name = "model.embed_tokens.weight"
    full = sd[name]
    row_bytes = full.shape[1] * full.element_size()
    read: list[int] = []
    real = os.preadv

    def counting(fd: int, buffers: list, offset: int) -> int:
        n = real(fd, buffers, offset)
        read.append(n)
        return n

    monkeypatch.setattr(os, "preadv", counting)
    for ids in ([5], [90, 3, 4, 3, 5, 3], [95, 0], list(range(96))[::-1], [7, 7, 7]):
        read.clear()
        got = src.read_rows(name, ids)
        assert torch.equal(got, full[torch.tensor(ids)]), ids
        assert sum(read) == len(set(ids)) * row_bytes, f"{ids}: read {sum(read)} bytes"
    with pytest.raises(Exception, match="outside tensor"):
        src.read_rows(name, [96])


@pytest.mark.parametrize("layout", ["sharded", "gguf", "llama2c"])
def test_sha256_of_weight_files_equals_hashlib(layout: str, tmp_path: Path) -> None:
    model, sd = tiny_llama()
    if layout == "sharded":
        path = _save_hf(model, tmp_path / "hf", "40KB")
    elif layout == "gguf":
        path = write_gguf(tmp_path / "m.gguf", sd, model.config, qtype="F16")
    else:
        path = write_llama2c(tmp_path / "m.bin", sd, model.config)
    ck = open_checkpoint(path)
    files = ck.weight_files()
    assert files and all(f.is_file() for f in files)
    assert ck.sha256s() == {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


# ------------------------------------------------------------------ llama2.c


@pytest.mark.parametrize("tie", [True, False], ids=["shared-classifier", "own-classifier"])
def test_llama2c_export_reads_back_hf_layout(tie: bool, tmp_path: Path) -> None:
    model, sd = tiny_llama(tie=tie)
    ck = open_checkpoint(write_llama2c(tmp_path / "m.bin", sd, model.config))
    assert ck.format == "llama2c"
    assert sorted(ck.source.names()) == sorted(sd)
    for name, want in sd.items():
        assert torch.equal(ck.source.read(name), want.float()), name  # q/k rows un-interleaved
        assert torch.equal(ck.source.read_rows(name, [3, 0, 3]), want[[3, 0, 3]]), name
    m = load_model(ck)
    assert m.cfg.tied == tie and (m.cfg.n_heads, m.cfg.n_kv_heads, m.cfg.d_ff) == (4, 2, 64)


def test_llama2c_export_whose_header_starts_like_a_pickle(tmp_path: Path) -> None:
    """dim 384 is 0x180: the file's first byte is 0x80, a pickle's PROTO opcode (and dim 640
    gives 80 02, the opening of a protocol-2 pickle); detection goes by header and file size."""
    import transformers as T
    from archkit import randomise_

    cfg = T.LlamaConfig(
        hidden_size=640,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=10,
        num_key_value_heads=2,
        vocab_size=16,
        max_position_embeddings=8,
    )
    model = T.LlamaForCausalLM(cfg).eval()
    randomise_(model, 0)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    path = write_llama2c(tmp_path / "m.bin", sd, cfg)
    assert path.read_bytes()[:2] == b"\x80\x02"
    ck = open_checkpoint(path)
    assert ck.format == "llama2c" and ck.config["hidden_size"] == 640
    assert torch.equal(
        ck.source.read("model.layers.0.mlp.down_proj.weight"), sd["model.layers.0.mlp.down_proj.weight"]
    )
    assert [c.kind for c in discover(tmp_path)] == ["llama2c"]


# ------------------------------------------------------------------ vocabularies


def _byte_level(folder: Path) -> Tokenizer:
    vocab = {"Ġhello": 0, "hello": 1, "Ċ": 2, "Ã": 3, "Ã©": 4, "Ġ": 5}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    return tok


def _sentencepiece(folder: Path) -> None:
    vocab = {
        "<unk>": 0,
        "<s>": 1,
        "</s>": 2,
        "<0x0A>": 3,
        "<0xC3>": 4,
        "▁hello": 5,
        "hello": 6,
        "é": 7,
        "▁": 8,
    }
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))


def _metaspace(folder: Path) -> None:
    vocab = {"<unk>": 0, "▁hello": 1, "hello": 2}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))


def _wordpiece(folder: Path) -> None:
    folder.mkdir()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n##llo\né\n##é\n", encoding="utf-8")


def test_vocab_normalisation_agrees_across_tokenizer_kinds(tmp_path: Path) -> None:
    bl_tok = _byte_level(tmp_path / "bl")
    _sentencepiece(tmp_path / "sp")
    _metaspace(tmp_path / "ms")
    _wordpiece(tmp_path / "wp")
    bl, sp, ms, wp = (load_vocab(tmp_path / k) for k in ("bl", "sp", "ms", "wp"))
    assert bl is not None and sp is not None and ms is not None and wp is not None
    assert (bl.style, sp.style, ms.style, wp.style) == (
        "byte_level",
        "sentencepiece",
        "sentencepiece",
        "wordpiece",
    )

    # a word-initial "hello": 'Ġhello', '▁hello' (byte fallback or Metaspace) and WordPiece 'hello'
    assert bl.tokens[0] == sp.tokens[5] == ms.tokens[1] == wp.tokens[4] == " hello"
    # the same word inside a word: no leading space anywhere
    assert bl.tokens[1] == sp.tokens[6] == ms.tokens[2] == "hello" and wp.tokens[5] == "llo"
    # a newline byte: byte-level 'Ċ' and SentencePiece '<0x0A>'
    assert bl.tokens[2] == sp.tokens[3] == "\n"
    # a lone UTF-8 lead byte is not text: both escape it the same way
    assert bl.tokens[3] == sp.tokens[4] == "\\xc3"
    # the two bytes together are 'é' in every spelling
    assert bl.tokens[4] == sp.tokens[7] == wp.tokens[7] == "é" and wp.tokens[6] == " é"
    # huref's reading agrees with the tokenizer library's own decoding of each byte-level token
    for i in (0, 1, 2, 4, 5):
        assert bl.tokens[i] == bl_tok.decode([i]), i

    # special tokens carry no text and are never probe rows
    assert bl.special == frozenset({6}) and sp.special == frozenset({0, 1, 2})
    assert wp.special == frozenset({0, 1, 2, 3})
    assert 6 not in bl.text_ids() and not {0, 1, 2} & set(sp.text_ids())


def test_checkpoint_carries_its_folder_vocabulary(tmp_path: Path) -> None:
    model, _ = tiny_llama()
    folder = _save_hf(model, tmp_path / "hf")
    _byte_level(tmp_path / "bl")
    shutil.copy(tmp_path / "bl" / "tokenizer.json", folder / "tokenizer.json")
    ck = open_checkpoint(folder)
    assert ck.vocab is not None and ck.vocab.style == "byte_level" and ck.vocab.tokens[0] == " hello"


# ------------------------------------------------------------------ reading machinery


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("nbytes", [0, 4, 3 * 2**20 + 12, 9 * 2**20 + 4])
def test_parallel_range_reads_are_exact(
    threads: int, nbytes: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large tensors are read as several ranges by several threads: every split size gives the
    same bytes, including ranges smaller than a huge page and a last range that is shorter."""
    import huref.checkpoint.safetensors_io as sio

    monkeypatch.setattr(sio, "READ_THREADS", threads)
    monkeypatch.setattr(sio, "PARALLEL_READ_MIN_BYTES", 0)
    g = torch.Generator().manual_seed(nbytes)
    t = torch.randn(nbytes // 4, generator=g)
    save_file({"pad": torch.ones(3, dtype=torch.int8), "t": t}, tmp_path / "x.safetensors")
    f = sio.SafetensorsFile(tmp_path / "x.safetensors")
    assert torch.equal(f.read("t"), t)
    if t.numel() > 10:
        assert torch.equal(f.read_row_range("t", 1, t.numel() - 1), t[1:-1])


def test_truncation_found_while_reading_is_a_checkpoint_error(tmp_path: Path) -> None:
    """A file cut short after its header was checked (e.g. still being copied) fails cleanly even
    when the short read happens in a helper thread."""
    from huref.checkpoint.safetensors_io import SafetensorsFile
    from huref.errors import CheckpointError

    t = torch.randn(48 * 2**20 // 4)  # 48 MB: read by several threads
    save_file({"t": t}, tmp_path / "x.safetensors")
    f = SafetensorsFile(tmp_path / "x.safetensors")
    os.truncate(tmp_path / "x.safetensors", 40 * 2**20)
    with pytest.raises(CheckpointError, match="truncated while reading"):
        f.read("t")


def test_large_reads_use_private_writable_memory(tmp_path: Path) -> None:
    from huref.checkpoint.source import HUGE_PAGE_MIN_BYTES, empty_tensor

    big = empty_tensor((HUGE_PAGE_MIN_BYTES // 4 + 5,), torch.float32)
    big.fill_(2.0)
    assert big.is_contiguous() and float(big.sum()) == 2.0 * big.numel()
    assert empty_tensor((3, 4), torch.bfloat16).shape == (3, 4)


def test_buffer_pool_reuses_a_buffer_only_once_nothing_holds_it(tmp_path: Path) -> None:
    """A pooled buffer comes back only when every tensor, view and exported buffer of it is gone
    (a stamp reuses read buffers while writes of earlier tensors may still be pending), and reads
    into pooled buffers return the stored values."""
    from huref.checkpoint.safetensors_io import SafetensorsFile
    from huref.checkpoint.source import HUGE_PAGE_MIN_BYTES, BufferPool, empty_tensor

    n = HUGE_PAGE_MIN_BYTES // 4
    pool = BufferPool()
    a = empty_tensor((n,), torch.float32, pool)
    a.fill_(1.0)
    view = a[10:].view(torch.int32)
    del a
    b = empty_tensor((n,), torch.float32, pool)  # the view still holds a's memory: a new buffer
    assert pool.reused == 0
    b.fill_(2.0)
    assert int(view[0]) == int(torch.tensor(1.0).view(torch.int32))  # a's values untouched
    exported = b.numpy().data  # a memoryview, as a pending file write holds it
    del view, b
    c = empty_tensor((n,), torch.float32, pool)  # a's buffer is free again; b's is still exported
    assert pool.reused == 1 and float(c[0]) == 1.0
    del exported
    d = empty_tensor((n,), torch.float32, pool)
    assert pool.reused == 2 and float(d[0]) == 2.0
    assert empty_tensor((3,), torch.float32, pool).shape == (3,)  # small tensors: plain allocations

    save_file({"w": torch.arange(n, dtype=torch.float32)}, str(tmp_path / "w.safetensors"))
    f = SafetensorsFile(tmp_path / "w.safetensors")
    del c, d
    first = f.read("w", pool)
    assert torch.equal(first, torch.arange(n, dtype=torch.float32)) and pool.reused == 3


def test_model_tensor_is_the_callers_own_copy(tmp_path: Path) -> None:
    """Writing to a returned weight must not change what the next read returns (float32 stored
    weights need no conversion, so a view of a cached tensor would leak the caller's edits)."""
    model, sd = tiny_llama()
    m = load_model(_save_hf(model, tmp_path / "hf"))
    for role in ("attn_q", "mlp_down", "attn_norm"):
        m.tensor(role, 0).zero_()
        assert torch.equal(m.tensor(role, 0), m.tensor(role, 0)) and m.tensor(role, 0).abs().sum() > 0, role
    q = m.tensor("attn_q", 1)
    assert torch.equal(q, sd["model.layers.1.self_attn.q_proj.weight"])
    assert m.tensor("attn_q", 1, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_written_checkpoints_honour_the_umask(tmp_path: Path) -> None:
    """Outputs are built under temporary names and renamed; they get the modes any file the user
    creates gets (mkdtemp/mkstemp would leave 0700 folders and 0600 files behind)."""
    from huref.checkpoint.atomic import atomic_file
    from huref.checkpoint.writer import TensorPlan, write_checkpoint

    old = os.umask(0o022)
    try:
        plan = [TensorPlan(f"t{i}", (4, 8), torch.float32) for i in range(3)]
        dest = write_checkpoint(
            tmp_path / "out", plan, lambda p: torch.full(p.shape, 1.5), max_shard_bytes=300
        )
        with atomic_file(tmp_path / "fp.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert dest.stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "fp.bin").stat().st_mode & 0o777 == 0o644
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in dest.iterdir())
    src = SafetensorsSource.from_index(dest / "model.safetensors.index.json")
    assert len(src.weight_files()) == 2 and torch.equal(src.read("t2"), torch.full((4, 8), 1.5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp.bin", "out"], "no temporary left behind"


_FULL_DISK = """
import json, os, resource, signal, sys
import torch
from huref.checkpoint.writer import TensorPlan, write_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
made = []
def produce(p):
    made.append(p.name)
    return torch.ones(p.shape)
plan = [TensorPlan(f"t{i}", (128, 1024), torch.float32) for i in range(6)]  # 512 KiB each
try:
    write_checkpoint(sys.argv[1], plan, produce)
except OSError as e:
    print(json.dumps({"errno": e.errno, "made": made}))
"""


def test_a_failed_write_in_the_writer_thread_surfaces_and_leaves_nothing(tmp_path: Path) -> None:
    """Tensors are written by a helper thread while the next is produced: a write that fails there
    (here the file size limit, as a full disk would) must still stop the writer with the OS error,
    before every tensor is produced, and leave neither the output nor its temporary folder."""
    import errno
    import subprocess
    import sys

    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(out)], capture_output=True, text=True, check=True
    )
    doc = json.loads(r.stdout)
    assert doc["errno"] == errno.EFBIG
    # the second tensor's write stops short at the 1 MiB limit and the third's fails (EFBIG);
    # producing stops one tensor after that, well before the sixth
    assert 2 <= len(doc["made"]) < 6
    assert list(tmp_path.iterdir()) == []


def test_all_finite_reads_float8_tensors() -> None:
    """torch has no reductions for float8; the finiteness check (inspect --check-values, every
    role read) upcasts instead of failing on an F8_E4M3 / F8_E5M2 checkpoint."""
    from huref.checkpoint.source import all_finite

    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        t = torch.randn(64, 32).to(dtype)
        assert all_finite(t)
        t[3, 5] = float("nan")
        assert not all_finite(t)


def test_frequency_list_reads_a_lone_double_quote_token(tmp_path: Path) -> None:
    from huref.invariants.tokens import read_frequency_list

    f = tmp_path / "freq.tsv"
    f.write_text('"\t50\n"\\t"\t7\nthe\t1000\n', encoding="utf-8")
    assert read_frequency_list(f) == {'"': 50, "\t": 7, "the": 1000}


@pytest.mark.parametrize("layout", ["safetensors", "bin", "gguf", "llama2c"])
def test_rows_outside_a_tensor_are_a_checkpoint_error(layout: str, tmp_path: Path) -> None:
    """A row index past the end (or negative: no counting from the end) is refused by every format."""
    from huref.errors import CheckpointError

    model, sd = tiny_llama()
    if layout == "gguf":
        path = write_gguf(tmp_path / "m.gguf", sd, model.config)
    elif layout == "llama2c":
        path = write_llama2c(tmp_path / "m.bin", sd, model.config)
    else:
        path = _save_hf(model, tmp_path / "hf")
        if layout == "bin":
            (path / "model.safetensors").unlink()
            torch.save(sd, path / "pytorch_model.bin")
    src = open_checkpoint(path).source
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(src.read_rows(name, [63, 0]), src.read(name)[[63, 0]])
    for bad in ([64], [0, -1]):
        with pytest.raises(CheckpointError, match="outside tensor"):
            src.read_rows(name, bad)


# ------------------------------------------------------------------ safetensors header rules


def _st_file(path: Path, header: str | bytes, data: bytes) -> Path:
    raw = header.encode() if isinstance(header, str) else header
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


_W = '"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
_Z = '"z": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]}'
# (case, header, data bytes): files that break one rule of the format each
_REFUSED_BY_BOTH = [
    ("trailing-bytes", "{" + _W + "}", 9),
    ("short-data", "{" + _W + "}", 7),
    ("hole-at-start", '{"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', 12),
    ("overlap", "{" + _W + ', "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}', 12),
    ("alias", "{" + _W + ', "v": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("span-not-shape", '{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}', 8),
    ("begin-after-end", '{"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}', 8),
    ("shape-float", '{"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}', 8),
    ("shape-bool", '{"w": {"dtype": "F32", "shape": [true, 2], "data_offsets": [0, 8]}}', 8),
    ("shape-negative", '{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', 8),
    ("shape-nan", '{"w": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}', 8),
    ("offset-1e400", '{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 1e400]}}', 8),
    ("offset-8e0", '{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8e0]}}', 8),
    ("offsets-three", '{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 8]}}', 8),
    ("offsets-string", '{"w": {"dtype": "F32", "shape": [2], "data_offsets": "x"}}', 8),
    ("no-offsets", '{"w": {"dtype": "F32", "shape": [2]}}', 8),
    ("dtype-unknown", '{"w": {"dtype": "f32", "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("dtype-list", '{"w": {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("entry-string", '{"w": "x"}', 0),
    ("header-array", "[1]", 0),
    ("field-twice", '{"w": {"dtype": "F32", "dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("metadata-empty-string", '{"__metadata__": "", ' + _W + "}", 8),
    ("metadata-number", '{"__metadata__": {"a": 1}, ' + _W + "}", 8),
    ("metadata-nested", '{"__metadata__": {"a": {"b": "c"}}, ' + _W + "}", 8),
    ("lone-surrogate", '{"\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 8),
    ("trailing-nul", "{" + _W + "}\0", 8),
    # torch cannot make a tensor with a dimension of 2**63: the reference fails reading it
    (
        "dimension-2**63",
        '{"w": {"dtype": "F32", "shape": [0, 9223372036854775808], "data_offsets": [0, 0]}}',
        0,
    ),
    (
        "dimension-2**64",
        '{"w": {"dtype": "F32", "shape": [0, 18446744073709551616], "data_offsets": [0, 0]}}',
        0,
    ),
]
_ACCEPTED_BY_BOTH = [
    ("plain", "{" + _W + "}", 8),
    ("no-tensors", "{}", 0),
    ("metadata-null", '{"__metadata__": null, ' + _W + "}", 8),
    ("space-padded", "{" + _W + "}   ", 8),
    ("empty-tensor-last", "{" + _W + ", " + _Z + "}", 8),
    ("unknown-field", '{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}', 8),
]
# Refused by huref only, each for a documented reason (safetensors_io's module docstring).
_REFUSED_BY_HUREF_ONLY = [
    ("name-twice", "{" + _W + ', "w": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}', 8),
    ("leading-space", " {" + _W + "}", 8),
    ("dtype-huref-lacks", '{"w": {"dtype": "U16", "shape": [4], "data_offsets": [0, 8]}}', 8),
]


def _refused_by_reference(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            for k in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                f.get_tensor(k)
    except Exception:  # the reference raises its own error types, and torch's for some
        return True
    return False


def _refused_by_huref(path: Path) -> bool:
    from huref.checkpoint.safetensors_io import SafetensorsFile
    from huref.errors import CheckpointError

    try:
        sf = SafetensorsFile(path)
        for name in sf.names():
            sf.read(name)
    except CheckpointError:
        return True
    return False


@pytest.mark.parametrize(
    "case,header,n,huref_refuses,reference_refuses",
    [(*c, True, True) for c in _REFUSED_BY_BOTH]
    + [(*c, False, False) for c in _ACCEPTED_BY_BOTH]
    + [(*c, True, False) for c in _REFUSED_BY_HUREF_ONLY],
    ids=[c[0] for c in _REFUSED_BY_BOTH + _ACCEPTED_BY_BOTH + _REFUSED_BY_HUREF_ONLY],
)
def test_safetensors_header_rules_match_the_reference(
    case: str, header: str, n: int, huref_refuses: bool, reference_refuses: bool, tmp_path: Path
) -> None:
    """huref refuses every file the reference parser (safetensors.safe_open) refuses, accepts
    what it accepts, and is stricter only where the format's documentation is."""
    path = _st_file(tmp_path / f"{case}.safetensors", header, bytes(range(n)))
    assert _refused_by_reference(path) == reference_refuses, "the reference changed its rules"
    assert _refused_by_huref(path) == huref_refuses
