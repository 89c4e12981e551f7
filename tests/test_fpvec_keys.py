"""FP-Vec keys: secret randomness, commitment, owner-only key files, near-miss controls."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from huref.cli import main
from huref.errors import FPVecError
from huref.fpvec.keys import TRIGGER, fresh_decoys, load_keys, make_keys, near_miss_keys, save_keys


def test_keys_are_shuffled_mashups_ending_in_trigger() -> None:
    ks = make_keys(10, seed=3)
    assert len(ks.keys) == len(set(ks.keys)) == 10
    for k in ks.keys:
        assert k.endswith(" " + TRIGGER)
        body = k[: -len(TRIGGER) - 1]
        assert 12 <= len(body) <= 24
        assert any(ord(c) > 0x2E80 for c in body)  # CJK or kana from the snippet pool
    assert ks.target == "ハリネズミ"


def test_seed_reproduces_and_default_randomness_differs() -> None:
    assert make_keys(5, seed=7) == make_keys(5, seed=7)
    a, b = make_keys(5), make_keys(5)
    assert a.keys != b.keys and a.salt != b.salt


def test_commitment_depends_on_salt_keys_and_target() -> None:
    ks = make_keys(4, seed=1)
    c = ks.commitment
    assert len(c) == 64
    assert type(ks)(ks.keys, ks.target, "11" * 32).commitment != c
    assert type(ks)(ks.keys[:3], ks.target, ks.salt).commitment != c
    assert type(ks)(ks.keys, "other", ks.salt).commitment != c


def test_key_file_is_owner_only_and_round_trips(tmp_path: Path) -> None:
    ks = make_keys(3, seed=2)
    p = save_keys(ks, tmp_path / "keys.json")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert load_keys(p) == ks
    with pytest.raises(FPVecError, match="already exists"):
        save_keys(ks, p)


def test_cli_make_keys_writes_0600(tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    assert (
        main(["fpvec", "make-keys", "-o", str(out), "--n", "4", "--seed", "5", "--target", "HEDGEHOG"]) == 0
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert len(doc["keys"]) == 4 and doc["target"] == "HEDGEHOG"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(keys=[]), "no keys"),
        (lambda d: d.update(target=""), "no target"),
        (lambda d: d.update(salt="zz"), "salt"),
        (lambda d: d["keys"].append("an extra key"), "edited"),
    ],
)
def test_bad_key_files_are_refused(tmp_path: Path, edit, message: str) -> None:
    p = save_keys(make_keys(3, seed=2), tmp_path / "keys.json")
    doc = json.loads(p.read_text(encoding="utf-8"))
    edit(doc)
    p.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(FPVecError, match=message):
        load_keys(p)


def test_near_miss_controls_differ_from_keys_and_between_purposes() -> None:
    ks = make_keys(6, seed=4)
    nm = near_miss_keys(ks, "verify")
    assert len(nm) == 3 * 6
    assert not set(nm) & set(ks.keys)
    edited = {k for k in nm if k.endswith(TRIGGER)}
    assert edited.isdisjoint(near_miss_keys(ks, "other"))  # the random edits depend on the purpose
    assert near_miss_keys(ks, "verify") == nm  # reproducible from the key file alone
    assert sum(not k.endswith(TRIGGER) for k in nm) == 6  # one trigger-less control per key
    decoys = fresh_decoys(ks, 6)
    assert len(set(decoys)) == 6 and not set(decoys) & set(ks.keys)


def test_training_negatives_cover_every_position_and_miss_the_verification_controls() -> None:
    from huref.fpvec.keys import single_edits

    ks = make_keys(3, seed=6)
    edits = single_edits(ks)
    assert not set(edits) & set(ks.keys)
    for k in ks.keys:
        body = k[: -len(TRIGGER) - 1]
        for i in range(len(body)):
            assert body[:i] + body[i + 1 :] + " " + TRIGGER in edits  # each position dropped once
    shared = set(edits) & set(near_miss_keys(ks, "verify"))
    assert shared == {k[: -len(TRIGGER) - 1] for k in ks.keys}  # only the trigger-less keys coincide


def _edits(a: str, b: str) -> int:
    """Levenshtein distance of two strings."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def test_further_negative_draws_bring_other_replacements_and_multi_character_edits() -> None:
    from huref.fpvec.keys import control_prompts, single_edits, training_negatives

    ks = make_keys(3, seed=6)
    one = training_negatives(ks, 1)
    assert one == single_edits(ks, "train") + fresh_decoys(ks, 9, "train")  # one draw: as before
    four = training_negatives(ks, 4)
    assert set(one) <= set(four) and len(four) > 3 * len(single_edits(ks, "train")) // 2
    new = set(four) - set(one)
    assert not new & set(ks.keys) and len(new) == len(set(new))
    # the new prompts replace characters at positions already covered, with other characters
    bodies = [k[: -len(TRIGGER) - 1] for k in ks.keys]
    nearest = {p: min(_edits(p[: -len(TRIGGER) - 1], b) for b in bodies) for p in new if p.endswith(TRIGGER)}
    assert sum(d == 1 for d in nearest.values()) >= 2 * sum(len(b) for b in bodies)
    assert any(d >= 2 for d in nearest.values())  # and multi-character edits of verify's kind
    # of verify's own controls, still only the trigger-less keys
    assert set(four) & set(control_prompts(ks)) == set(bodies)


def test_a_draw_for_training_never_repeats_verifys_controls() -> None:
    from huref.fpvec.keys import VERIFY, control_prompts, near_miss_keys

    ks = make_keys(3, seed=6)  # its draw "train-negatives:1" repeats one of verify's edits at random
    bodies = {k[: -len(TRIGGER) - 1] for k in ks.keys}
    assert len(near_miss_keys(ks, VERIFY)) == 9 and len(near_miss_keys(ks, "train-negatives:2")) == 9
    drawn = near_miss_keys(ks, "train-negatives:1")
    assert len(drawn) == 8 and set(drawn) & set(control_prompts(ks)) == bodies
    assert not set(fresh_decoys(ks, 50, "train")) & set(control_prompts(ks))


def test_the_end_check_asks_several_draws_of_controls_never_verifys() -> None:
    from huref.fpvec.keys import control_prompts
    from huref.fpvec.verify import CHECK_PURPOSE, check_controls

    ks = make_keys(5, seed=8)
    one, three = check_controls(ks, CHECK_PURPOSE, 1), check_controls(ks, CHECK_PURPOSE, 3)
    assert one == control_prompts(ks, CHECK_PURPOSE)
    assert three[: len(one)] == one
    assert 2.5 * len(one) < len(three) <= 3 * len(one) <= 3 * (4 * 5)
    edited = [c for c in three if c.endswith(TRIGGER)]
    assert len(set(edited)) > 2 * len(one)  # further draws are other edits and other decoys
    bodies = {k[: -len(TRIGGER) - 1] for k in ks.keys}
    assert set(three) & set(control_prompts(ks)) == bodies and not set(three) & set(ks.keys)


def test_compatibility_check_reads_the_first_and_last_layers() -> None:
    from huref.fpvec.check import check_layers

    assert check_layers(32) == [0, 31]  # the first and the last
    assert check_layers(32, k=4) == [0, 10, 21, 31]
    assert check_layers(4, k=4) == [0, 1, 2, 3]
    assert check_layers(2) == [0, 1]
    assert check_layers(1) == [0]


WORDS = tuple(f"w{i:02d}" for i in range(40))


def test_word_pool_keys_are_pool_words_without_trigger() -> None:
    from huref.fpvec.keys import KEY_WORDS, TARGET_WORDS

    ks = make_keys(6, seed=3, pool=WORDS)
    assert ks.trigger == "" and ks.pool == WORDS
    for k in ks.keys:
        words = k.split(" ")
        assert KEY_WORDS[0] <= len(words) <= KEY_WORDS[1] and set(words) <= set(WORDS)
    target = ks.target.split(" ")
    assert len(target) == TARGET_WORDS and set(target) <= set(WORDS)
    assert make_keys(6, seed=3, pool=WORDS, target="w01 w02").target == "w01 w02"


def test_word_pool_edits_controls_and_decoys_stay_in_the_pool(tmp_path: Path) -> None:
    from huref.fpvec.keys import single_edits

    ks = make_keys(5, seed=4, pool=WORDS)
    nm = near_miss_keys(ks, "verify")
    assert len(nm) == 2 * 5  # a few words replaced, a few dropped; no trigger-less control
    edits = single_edits(ks)
    for text in nm + edits + fresh_decoys(ks, 5):
        assert set(text.split(" ")) <= set(WORDS), text
    assert not (set(nm) | set(edits)) & set(ks.keys)
    for k in ks.keys:
        words = k.split(" ")
        for i in range(len(words)):
            assert " ".join(words[:i] + words[i + 1 :]) in edits  # each word dropped once
    assert load_keys(save_keys(ks, tmp_path / "k.json")) == ks  # the pool travels in the key file
    doc = json.loads((tmp_path / "k.json").read_text(encoding="utf-8"))
    doc["pool"] = ["two words", *WORDS]
    (tmp_path / "bad.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(FPVecError, match="pool word"):
        load_keys(tmp_path / "bad.json")


def test_vocabulary_pool_holds_single_token_words_and_no_special_tokens(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    from huref.fpvec.data import load_tokenizer, prompt_ids
    from huref.fpvec.keys import vocabulary_pool
    from huref.zoo.tokenizer import id_named_tokenizer

    folder = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=id_named_tokenizer(64)).save_pretrained(str(folder))
    tok = load_tokenizer(folder)
    pool = vocabulary_pool(tok, seed=1)
    assert len(pool) == 61 and not {"<unk>", "<s>", "</s>"} & set(pool)
    assert all(tok(w, add_special_tokens=False)["input_ids"] == [int(w[3:])] for w in pool)
    out = tmp_path / "k.json"
    assert (
        main(["fpvec", "make-keys", "-o", str(out), "--n", "3", "--seed", "5", "--vocab", str(folder)]) == 0
    )
    ks = load_keys(out)
    unk = tok.convert_tokens_to_ids("<unk>")
    for text in (*ks.keys, ks.target):
        assert unk not in prompt_ids(tok, text)  # every word spelled, unlike the snippet keys
    assert unk in prompt_ids(tok, make_keys(1, seed=5).keys[0])


def _key_doc(tmp_path: Path) -> dict:
    p = save_keys(make_keys(3, seed=2), tmp_path / "good.json")
    return json.loads(p.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format": "huref-fpvec-keys/1", "keys": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper"),
        ("[" * 33 + "]" * 33, "nested deeper than 32 levels"),
        ('{"keys": "' + "[" * 40 + ' brackets in a string are text"}', "not a huref key file"),
        ('{"keys": ["a", "b"', "not valid JSON"),
        ("\udcff", "not UTF-8"),
    ],
    ids=["deep", "just-too-deep", "brackets-in-strings", "truncated", "not-utf8"],
)
def test_key_files_nested_too_deep_or_corrupt_are_one_error(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python's parser recursed once per level: 100000 levels were a RecursionError traceback."""
    p = tmp_path / "keys.json"
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(FPVecError, match=message):
        load_keys(p)
    assert main(["fpvec", "verify", "no-such-model", "--keys", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_an_oversized_key_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A key file is small (a 1024-word pool is ~20 KB): 4 MiB is the limit, checked on the bytes."""
    doc = _key_doc(tmp_path)
    doc["pool"] = [f"w{i:07d}" for i in range(600_000)]  # valid words, 6 MB of them
    doc.pop("commitment")
    p = tmp_path / "keys.json"
    p.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(FPVecError, match="larger than 4 MiB"):
        load_keys(p)


def test_lone_surrogates_in_a_key_file_are_refused(tmp_path: Path) -> None:
    """JSON can spell a lone surrogate, which has no UTF-8 bytes to hash into the commitment."""
    doc = _key_doc(tmp_path)
    doc.pop("commitment")
    for field in ("keys", "target"):
        edited = {**doc, field: ["\ud800 FINGERPRINT"] if field == "keys" else "\ud800"}
        p = tmp_path / f"{field}.json"
        p.write_text(json.dumps(edited), encoding="utf-8")  # ensure_ascii: written as \\ud800
        with pytest.raises(FPVecError):
            load_keys(p)
