"""The account of a stage's data: one line per problem, counts by reason, one summary, the rejects file."""

import json
import logging

from picovlm.data.records import BAD_IMAGE, BAD_RECORD, DAMAGED_FILE, TOO_LONG
from picovlm.data.report import DataReport


def test_counts_summary_and_rejects_file(tmp_path, caplog):
    rejects = tmp_path / "rejects.jsonl"
    report = DataReport("instruct", rejects)
    report.read = 10
    with caplog.at_level(logging.WARNING, logger="picovlm.data.report"):
        report.reject("a.json#1 (id x)", TOO_LONG, "too long: 600 tokens", {"id": "x"})
        report.reject("a.json#4", BAD_IMAGE, "img.png: not a readable image")
        report.reject("a.json#7", TOO_LONG, "too long: 700 tokens")
        report.reject("b.json#2", DAMAGED_FILE, "invalid JSON; the rest of the file was not read")
        report.truncate("a.json#9", "cut after answer 2 of 3")
    assert [r.getMessage() for r in caplog.records] == [
        "a.json#1 (id x): too long: 600 tokens",
        "a.json#4: img.png: not a readable image",
        "a.json#7: too long: 700 tokens",
        "b.json#2: invalid JSON; the rest of the file was not read",
        "a.json#9: cut after answer 2 of 3",
    ]
    assert report.summary() == (
        "instruct data: 10 records read, 7 used, 3 skipped (2 too long, 1 bad image), 1 of those used truncated; "
        "not read to the end: b.json#2"
    )
    assert report.as_dict() == {"read": 10, "used": 7, "skipped": {TOO_LONG: 2, BAD_IMAGE: 1, DAMAGED_FILE: 1},
                                "truncated": 1}  # fmt: skip
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert lines[0] == {"stage": "instruct", "source": "a.json#1 (id x)", "reason": TOO_LONG,
                        "error": "too long: 600 tokens", "record": {"id": "x"}}  # fmt: skip
    assert [line["reason"] for line in lines] == [TOO_LONG, BAD_IMAGE, TOO_LONG, DAMAGED_FILE]


def test_a_clean_read_and_a_quiet_one(tmp_path, caplog):
    report = DataReport("lm")
    report.read = 4
    assert report.summary() == "lm data: 4 records read, 4 used, 0 skipped"
    quiet = DataReport("lm", tmp_path / "rejects.jsonl", quiet=True)
    with caplog.at_level(logging.WARNING, logger="picovlm.data.report"):
        quiet.reject("a.json#0", BAD_RECORD, "missing key")
    assert quiet.counts() == {BAD_RECORD: 1} and not caplog.records and not (tmp_path / "rejects.jsonl").exists()
