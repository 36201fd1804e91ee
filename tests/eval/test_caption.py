"""Caption metrics against the reference tools themselves: pycocotools reads the files and
pycocoevalcap scores them the way COCOEvalCap.evaluate does (all but SPICE, which needs a download)."""

import json

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools.coco import COCO

from picovlm.eval.caption import NO_JAVA, java_available, meteor_scorer, score_captions, simple_tokenize
from picovlm.eval.harness import score_files

REFS = {
    1: [
        "A small red circle at the top left.",
        "There is 1 object: a small red circle at the top left.",
        "A picture of a small red circle.",
        "At the top left there is a small red circle.",
        "A red circle.",
    ],
    2: [
        "A large blue square in the center and a small green diamond at the bottom.",
        "There are 2 objects: a large blue square and a small green diamond.",
        "A picture of a blue square, and a green diamond.",
        "In the center there is a large blue square.",
        "Two shapes: a blue square and a green diamond.",
    ],
    3: [
        "A large yellow triangle at the right.",
        "There is a yellow triangle on the right.",
        "A picture of a large yellow triangle.",
        "At the right there is a large yellow triangle.",
        "One yellow triangle.",
    ],
}
PREDS = {1: "A small red circle at the top.", 2: "A blue square and a green diamond.", 3: "A small purple circle."}


def coco_reference(ann_file, res_file, with_meteor):
    """What COCOEvalCap.evaluate computes (its own code path: COCO, loadRes, PTB tokenizer, scorers)."""
    coco = COCO(str(ann_file))
    res = coco.loadRes(str(res_file))
    ids = res.getImgIds()
    gts = {i: coco.imgToAnns[i] for i in ids}
    out = {i: res.imgToAnns[i] for i in ids}
    tok = PTBTokenizer()
    gts, out = tok.tokenize(gts), tok.tokenize(out)
    scores = dict(
        zip(["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], Bleu(4).compute_score(gts, out, verbose=0)[0], strict=True)
    )
    if with_meteor:
        scores["METEOR"] = meteor_scorer().compute_score(gts, out)[0]  # pycocoevalcap's Meteor, one JVM
    scores["ROUGE_L"] = Rouge().compute_score(gts, out)[0]
    scores["CIDEr"] = Cider().compute_score(gts, out)[0]
    return scores


@pytest.fixture
def coco_files(tmp_path):
    images = [{"id": i, "file_name": f"{i:012d}.png"} for i in REFS]
    anns = [{"id": 10 * i + k, "image_id": i, "caption": c} for i, refs in REFS.items() for k, c in enumerate(refs)]
    ann_file, res_file = tmp_path / "captions.json", tmp_path / "results.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns}))
    res_file.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in PREDS.items()]))
    return ann_file, res_file


def test_java_is_here():
    assert java_available()  # the machine and CI have Java 17; without it the next tests mean less


def test_score_files_matches_coco_eval_cap_including_meteor(coco_files):
    ann_file, res_file = coco_files
    expected = coco_reference(ann_file, res_file, with_meteor=True)
    got = score_files("caption", ann_file, res_file)
    assert got["notes"] == [] and got["n"] == 3
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < got["METEOR"] < 1 and 0 < got["CIDEr"]


def test_worked_examples():
    same = score_captions(
        {1: ["a red circle at the top"], 2: ["a blue square"]},
        {1: "A red circle at the top.", 2: "a blue square"},
        meteor=False,
    )
    assert same["Bleu_1"] == pytest.approx(1.0) and same["ROUGE_L"] == pytest.approx(1.0)
    assert same["Bleu_4"] < 1  # "a blue square" has no 4-gram: BLEU-4 of the corpus pays for it
    assert same["notes"] == ["METEOR skipped (meteor=False)"] and "METEOR" not in same
    bad = score_captions({1: ["a red circle"]}, {1: "green"}, meteor=False)
    assert bad["Bleu_1"] == pytest.approx(0.0, abs=1e-6) and bad["CIDEr"] == 0.0


def test_fallback_without_java_says_so_and_matches_on_simple_text():
    refs = {k: [simple_tokenize(c) for c in v] for k, v in REFS.items()}
    preds = {k: simple_tokenize(v) for k, v in PREDS.items()}
    assert preds[1] == "a small red circle at the top"
    got = score_captions(REFS, PREDS, use_java=False)
    assert got["notes"] == [NO_JAVA] and "METEOR" not in got
    gts, res = refs, {k: [v] for k, v in preds.items()}
    assert got["CIDEr"] == pytest.approx(Cider().compute_score(gts, res)[0])
    assert got["Bleu_4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3])


def test_bad_input():
    with pytest.raises(ValueError, match="image_id 2"):
        score_captions({1: ["x"], 2: ["y"]}, {1: "x"}, meteor=False)
    with pytest.raises(ValueError, match="no reference"):
        score_captions({1: []}, {1: "x"}, meteor=False)
